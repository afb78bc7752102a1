"""GGUF models with swappable LoRA adapters, on the CPU (the edgelora core through pyo3).

    import edgelora
    model = edgelora.Model.open("tiny")  # or a GGUF path, "smollm2", "gemma3-270m"
    intent = edgelora.Adapter.open("models/tiny/intent/adapter.gguf")
    model.generate("intent: turn on the kitchen light\\n", adapters=[(intent, 1.0)], stop=["\\n"])
    model.logits(model.tokenize("hello"), adapters=[(intent, 0.5)])  # float32 (n, n_vocab)

Each call takes the adapters it runs with; binding an adapter to a model happens once and is
cached, so switching adapters between calls costs nothing measurable. Calls release the GIL
and run on their own state, so threads may share a model.

Errors: FileNotFoundError (IsADirectoryError) for a missing file, ValueError for bad inputs
(a file that is not a model or adapter, an adapter for another base, a token id outside the
vocabulary, a scale that is not finite or beyond +-16, a prompt past the context).
"""

from collections.abc import Sequence
from os import PathLike
from typing import Optional, Union

import numpy as np
import numpy.typing as npt

__version__: str

AdapterList = Sequence[tuple["Adapter", float]]

class Model:
    """A GGUF model (llama, Qwen2/3, Gemma 2/3 families), memory-mapped read-only."""

    def __init__(self, path: Union[str, PathLike[str]]) -> None:
        """Same as `Model.open(path)`."""

    @staticmethod
    def open(path: Union[str, PathLike[str]]) -> "Model":
        """Open a GGUF file, or an alias (`tiny`, `smollm2`, `gemma3-270m`) looked up in
        `$EDGELORA_MODELS`, `./models` and the source tree's `models/`."""

    @property
    def n_vocab(self) -> int:
        """Vocabulary size (columns of `logits`)."""

    @property
    def ctx_len(self) -> int:
        """Context length the model was trained for."""

    @property
    def architecture(self) -> str:
        """`general.architecture` (`llama`, `qwen2`, `qwen3`, `gemma2`, `gemma3`)."""

    @property
    def path(self) -> str:
        """The file the model was loaded from."""

    @property
    def eog_ids(self) -> list[int]:
        """End-of-generation token ids."""

    def tokenize(self, text: str, special: bool = False, add_bos: bool = True) -> list[int]:
        """Token ids of `text`, BOS first when `add_bos` and the model asks for it (as `logits`
        and `generate` run prompts); `special=True` matches special tokens in the text."""

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of `ids`, control tokens skipped."""

    def logits(
        self,
        ids: Sequence[int],
        adapters: Optional[AdapterList] = None,
        reference: bool = False,
    ) -> npt.NDArray[np.float32]:
        """Teacher-forced logits, shape `(len(ids), n_vocab)`: row i follows `ids[: i + 1]`.
        `reference=True` runs the scalar reference kernels (f32 activations; slow)."""

    def generate(
        self,
        prompt: str,
        adapters: Optional[AdapterList] = None,
        max_tokens: int = 64,
        stop: Optional[Sequence[str]] = None,
        seed: Optional[int] = None,
        temperature: float = 0.0,
        chat: bool = False,
        system: Optional[str] = None,
        top_k: int = 40,
        top_p: float = 0.95,
        repeat_penalty: float = 1.0,
        reference: bool = False,
    ) -> str:
        """Text after `prompt`: up to `max_tokens` tokens, ending at the model's
        end-of-generation token (not included) or before the first `stop` string.
        `temperature=0` is greedy; `seed` defaults to 42 (the CLI's). `chat=True` renders the
        prompt as a user turn in the model's chat template (`edgelora generate --chat`)."""

class Adapter:
    """A LoRA adapter (GGUF, llama.cpp's layout)."""

    def __init__(self, path: Union[str, PathLike[str]]) -> None:
        """Same as `Adapter.open(path)`."""

    @staticmethod
    def open(path: Union[str, PathLike[str]]) -> "Adapter":
        """Open a GGUF LoRA adapter."""

    @staticmethod
    def convert(peft_dir: Union[str, PathLike[str]], base: Model, dtype: str = "f16") -> "Adapter":
        """Convert a PEFT LoRA directory (`adapter_config.json`, `adapter_model.safetensors`)
        for `base`, A and B stored as `f32`, `f16` or `q8_0`."""

    def save(self, path: Union[str, PathLike[str]]) -> None:
        """Write the adapter's GGUF bytes to `path`."""

    @property
    def rank(self) -> int:
        """Largest rank of any (A, B) pair."""

    @property
    def alpha(self) -> float:
        """`adapter.lora.alpha` (the scale applied is `scale * alpha / rank`)."""

    @property
    def task(self) -> Optional[str]:
        """The task recorded by edgelora's converter, if any."""

    @property
    def n_pairs(self) -> int:
        """Number of (A, B) pairs."""

    @property
    def path(self) -> str:
        """The file it was opened from (or the PEFT directory it was converted from)."""

def set_threads(n: int) -> None:
    """Threads for the matrix kernels, process-wide (1 to 64; default 1)."""

def kernel() -> str:
    """The SIMD kernel set this machine runs."""
