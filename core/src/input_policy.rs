//! # Input policy: what edgelora does with bytes and numbers it did not make
//!
//! Model files, adapters and adapter streams reach a device over the air, over UART or from a
//! user; token ids and positions come from callers that may be wrong. This page is the
//! contract for all of them. It has no code: it documents what the entry points below
//! guarantee, and every number on it is a constant you can read in the module it names.
//!
//! ## The guarantee
//!
//! For **every** entry point listed below and **every** input (any bytes, any ids, any
//! positions, any chunking):
//!
//! 1. **No panic.** Malformed input gives a typed [`Error`](crate::Error) whose
//!    [`ErrorKind`](crate::ErrorKind) says what is wrong, with the byte offset and the key or
//!    tensor name where they apply. Nothing a file or a caller controls reaches `unwrap`,
//!    indexing without a prior check, or unchecked arithmetic.
//! 2. **No undefined behaviour.** Outside the SIMD kernels, `unsafe` only reinterprets bytes
//!    as ggml blocks ([`quant::cast_blocks`](crate::quant::cast_blocks): `repr(C)` structs of
//!    `u8` arrays, alignment 1, length checked), views `f32` scratch as blocks
//!    ([`kernels::scratch_blocks`](crate::kernels::scratch_blocks)) and reads the dispatcher's
//!    cached `&'static Kernel` pointers; none of it depends on input. SIMD kernels are entered
//!    only through a [`Kernel`](crate::kernels::Kernel) whose existence proves the CPU has the
//!    instructions, with slice lengths clamped by the dispatcher first.
//! 3. **Bounded memory.** The `no_std` core never allocates. Where the `alloc`/`std` features
//!    add allocating conveniences, every allocation is sized by a length already checked
//!    against the input's own size or a cap below, so a 100-byte file cannot ask for 4 GiB.
//! 4. **Bounded work.** Parsing is linear in the input size, except the exact duplicate checks
//!    for keys and tensor names, which rescan the header only when a 2 KiB Bloom filter reports
//!    a possible repeat (real files: linear; adversarial ones: at most caps x header size).
//! 5. **Nothing changes until everything is checked.** A failed parse, bind or stream leaves
//!    every caller-visible object it did not return exactly as it was: the active adapter set,
//!    a slot table passed to a failed bind, a model, a state's KV cache after a refused
//!    position.
//!
//! How this is checked: each entry point has a libFuzzer target in `fuzz/` (run by
//! `scripts/fuzz.sh`) that asserts these properties and more specific oracles; every crash
//! input found becomes a file under `tests/fuzz-regressions/` that `tests/tests/regressions.rs`
//! replays on every `cargo test`, together with a corpus of hand-made malformed inputs, each
//! required to give its own specific [`ErrorKind`](crate::ErrorKind). Miri runs the core's unit
//! tests and the regression test (`scripts/miri.sh`). Adapter fault injection (power cuts, bit
//! flips, reordered chunks, lying headers, wrong base) is in `tests/tests/fault.rs`.
//!
//! ## Entry points
//!
//! | Entry point | Input from outside | Validated before use |
//! |---|---|---|
//! | [`Gguf::parse`](crate::Gguf::parse) | whole file | everything in the header: magic, version 2-3, counts and lengths against the caps, value types, UTF-8 of keys and names, unique keys and names, `general.alignment`, tensor types and dims, every tensor's bytes inside the file, aligned, in order, not overlapping, of exactly the size type x dims imply; nothing but alignment padding after the last tensor (every byte accounted for, so a lowered tensor count cannot shift the data section) |
//! | [`Gguf::parse_header`](crate::Gguf::parse_header) / [`check_header`](crate::Gguf::check_header) | a prefix + declared length | as `parse`, against the declared length; an incomplete prefix asks for more (never refused for being a prefix of a valid file) |
//! | [`Config::from_gguf`](crate::model::Config::from_gguf), [`Model::from_gguf`](crate::model::Model::from_gguf) | metadata, tensor shapes | architecture, every hyper-parameter in range and consistent (heads divide, rope dims even and within head dims), every tensor present with the exact shape and a runnable type |
//! | [`Model::forward_with`](crate::model::Model::forward_with), [`prefill_with`](crate::model::Model::prefill_with) | token ids, positions | id `< vocab` ([`TokenOutOfRange`](crate::ErrorKind::TokenOutOfRange)), position `< ctx` ([`ContextFull`](crate::ErrorKind::ContextFull)) and `<=` the filled cache ([`InvalidArgument`](crate::ErrorKind::InvalidArgument)), state and adapters made for this model; a whole prompt batch is checked before the cache is touched |
//! | [`State::new`](crate::model::State::new) | context length, buffer | `1..=ctx_len`, buffer at least [`State::len_for`](crate::model::State::len_for) (computed with checked arithmetic) |
//! | [`Adapter::parse`](crate::lora::Adapter::parse) | adapter file | GGUF as above; `general.type = adapter`, `adapter.type = lora`, finite alpha; every tensor a `.lora_a`/`.lora_b` pair, DoRA scale or replacement head; A and B types runnable, rank `1..=MAX_RANK`, B's columns = A's rows |
//! | [`Adapter::bind`](crate::lora::Adapter::bind) | adapter vs base | architecture, base fingerprint when recorded, every target a per-layer linear the base has, `(in, out)` of every pair and of a replacement head; all checked before the slot table is written |
//! | [`StreamLoader::push`](crate::lora::stream::StreamLoader::push) / [`finish`](crate::lora::stream::StreamLoader::finish) | chunks of any size | frame magic, version and header CRC as soon as 24 bytes are in; payload length against the receive buffer; no byte past the declared end; the GGUF header against the declared length and "is a LoRA adapter" as soon as the header is complete; CRC-32 of the payload and a full `Adapter::parse` at `finish` |
//! | `lora::convert::convert_peft` (`std`) | `adapter_config.json`, safetensors | JSON validity; options a GGUF LoRA cannot represent are refused by name; every tensor name, shape, rank (against `r`/`rank_pattern`) and target against the base |
//! | `format::safetensors::SafeTensors::parse` (`std`) | safetensors file | header length against the cap and the file, JSON, dtype, shape (at most 8 dims, product checked), `data_offsets` inside the data and equal to shape x dtype size, no overlap |
//! | [`Tokenizer::new`](crate::tokenizer::Tokenizer::new) | vocabulary metadata | model and pre-tokeniser names, array types and lengths, UTF-8 of every token, token types `0..=6`, every merge `"a b"` naming tokens, byte tokens `<0xXX>`, special ids `< n_vocab`, scratch length |
//! | [`Tokenizer::encode`](crate::tokenizer::Tokenizer::encode) | text | any `&str` below 2 GiB; output buffer capacity (`BufferTooSmall`, never an overrun) |
//! | [`Decoder::push`](crate::tokenizer::Decoder::push), [`Tokenizer::decode_into`](crate::tokenizer::Tokenizer::decode_into) | token ids | id `< n_vocab`; output capacity; output is always whole UTF-8 characters |
//! | [`Sampler::new`](crate::sample::Sampler::new) | sampling parameters | temperature finite and `>= 0`, `top_p` in `(0, 1]`, repetition penalty finite and `> 0` |
//! | [`AdapterSet::push`](crate::lora::AdapterSet::push) / [`set_scale`](crate::lora::AdapterSet::set_scale) | scales, indices | finite scale, at most `MAX_ACTIVE` adapters, index of an active adapter |
//!
//! ## Hard caps and why each has its value
//!
//! Caps exist to bound arithmetic and work, not to second-guess real models: each is far
//! above what any public model of the supported families uses, and low enough that sizes
//! derived from it cannot overflow a `u64` (or the `u32` offsets the tokenizer stores).
//!
//! ### GGUF ([`format::gguf`](crate::format::gguf))
//!
//! | Cap | Value | Why this value |
//! |---|---|---|
//! | [`MAX_KV`](crate::format::gguf::MAX_KV) | 8192 pairs | real models carry under 100 keys (tokenizer data is in arrays); bounds the duplicate-key rescans |
//! | [`MAX_TENSORS`](crate::format::gguf::MAX_TENSORS) | 16384 | the largest public MoE GGUFs have a few thousand tensors; bounds the duplicate-name rescans |
//! | [`MAX_KEY_LEN`](crate::format::gguf::MAX_KEY_LEN) | 65535 bytes | the GGUF spec's own limit for keys; also used for tensor names (ggml itself uses 64) |
//! | [`MAX_STR_LEN`](crate::format::gguf::MAX_STR_LEN) | 16 MiB | the longest real string values are chat templates of tens of KB; a 16 MiB cap keeps any single value far inside a 32-bit address space |
//! | [`MAX_ARRAY_LEN`](crate::format::gguf::MAX_ARRAY_LEN) | 2^24 elements | vocabularies reach ~256k tokens and merge lists similar; 2^24 keeps `len x 8` bytes and the tokenizer's `u32` offsets and ids (which reserve bit 31) exact |
//! | [`MAX_ARRAY_DEPTH`](crate::format::gguf::MAX_ARRAY_DEPTH) | 4 | nested arrays are legal but unused by real models; the cap bounds the parser's recursion (stack use on a microcontroller) |
//! | [`MAX_DIMS`](crate::format::gguf::MAX_DIMS) | 4 | ggml's `GGML_MAX_DIMS`; `n_dims = 0` is refused too |
//! | tensor elements | `<= i64::MAX`, every dim `>= 1` | ggml stores `ne` as `int64_t`; checked with `checked_mul` per dim, then bytes = row bytes x rows checked again |
//! | [`MAX_ALIGNMENT`](crate::format::gguf::MAX_ALIGNMENT) | 2^16, power of two | real files use 32 ([`DEFAULT_ALIGNMENT`](crate::format::gguf::DEFAULT_ALIGNMENT)) or 64; a huge alignment would only waste bytes, a non-power-of-two breaks the offset arithmetic |
//! | total bytes | the input's length | every tensor's `[offset, offset + size)` must lie in the file (or in the declared stream length) |
//!
//! ### Model ([`model`](crate::model))
//!
//! | Cap | Value | Why this value |
//! |---|---|---|
//! | embedding / head width | `<= 2^16` | the largest llama-family models use 16384; keeps every `dim x dim` product inside `u64` and `usize` on 64-bit hosts |
//! | feed-forward width | `<= 2^19` (8 x the width cap) | llama ratios are 2.7-3.5x, MoE experts less |
//! | layers (metadata) | `<= 1024`, and `<= L` of `Model<L>` | public models have at most ~130; `L` (default [`DEFAULT_MAX_LAYERS`](crate::model::DEFAULT_MAX_LAYERS) = 64) sizes the layer table without an allocator, firmware picks a smaller one |
//! | vocabulary | `<= 2^22` | the largest vocabularies are ~256k; equal to `token_embd` rows and `llama.vocab_size` when present |
//! | context length | `<= 2^24` | bounds the KV cache size computation; the state's own `ctx` is what the caller allocates ([`State::len_for`](crate::model::State::len_for) is checked arithmetic) |
//!
//! ### LoRA ([`lora`](crate::lora), [`lora::stream`](crate::lora::stream))
//!
//! | Cap | Value | Why this value |
//! |---|---|---|
//! | [`MAX_RANK`](crate::lora::MAX_RANK) | 256 | published adapters use r = 4..128; the forward pass keeps `A x` in a fixed `MAX_RANK`-float slice of the state, so the cap is also the scratch it costs |
//! | [`MAX_ACTIVE`](crate::lora::MAX_ACTIVE) | 4 adapters at once | an [`AdapterSet`](crate::lora::AdapterSet) is a fixed array so switching is O(1) and copy-only |
//! | stream payload | `<=` the caller's receive buffer | refused from the 24-byte frame header ([`BufferTooSmall`](crate::ErrorKind::BufferTooSmall)), before any payload byte is stored |
//! | header re-checks while streaming | when the missing field can be read, and after at least 1/16 growth | keeps the total header work `O(header)` even for 1-byte chunks |
//!
//! ### PEFT reader (`std`: `format::safetensors`, `lora::convert`)
//!
//! | Cap | Value | Why this value |
//! |---|---|---|
//! | `safetensors::MAX_HEADER` | 100 MiB JSON header | the `safetensors` reference implementation's own limit |
//! | dims per tensor | `<= 8` | PyTorch LoRA weights are 2-D (DoRA magnitudes 1-D) |
//! | element count and bytes | `checked_mul`, must equal `data_offsets` span | an overflowing shape cannot alias a short byte range |
//! | JSON nesting | 128 (`serde_json`'s recursion limit) | bounds stack use on deeply nested headers or configs |
//! | layers of the base | `Model<128>` in the converter | a host-side tool; 128 is above every llama-family model |
//!
//! ### Tokenizer ([`tokenizer`](crate::tokenizer))
//!
//! | Cap | Value | Why this value |
//! |---|---|---|
//! | token array bytes | `< 4 GiB - 16` | token offsets are stored as `u32` in the caller's scratch |
//! | vocabulary, merges | `<= 2^24` (the GGUF array cap) | ids share a `u32` word with a flag bit (bit 31) in the merge loop |
//! | scratch | [`Tokenizer::scratch_len`](crate::tokenizer::Tokenizer::scratch_len) words, checked arithmetic | a pure function of the metadata; [`BufferTooSmall`](crate::ErrorKind::BufferTooSmall) otherwise |
//! | text to encode | `< 2 GiB` | byte offsets of unmergeable symbols are stored below bit 31 |
//! | piece merged on the stack | 64 bytes (1.5 KiB of stack) | longer pieces use the unused tail of the caller's output, which [`encode_buf_len`](crate::tokenizer::Tokenizer::encode_buf_len) sizes |
//! | end-of-generation ids | 16 | a fixed array; llama.cpp's list has 10 texts |
//!
//! ### Errors ([`error`](crate::error))
//!
//! | Cap | Value | Why this value |
//! |---|---|---|
//! | [`NAME_CAP`](crate::error::NAME_CAP) | 48 bytes of a key or tensor name | errors are `Copy` and need no allocator; 48 bytes hold every llama.cpp tensor name, longer ones are marked truncated |
//!
//! ## What validation cannot catch
//!
//! - **A bit flip inside tensor data of an unframed file.** Any byte pattern of an F32/F16/Q8_0
//!   tensor is a valid value, so a raw adapter or model with a flipped weight parses. Use the
//!   framed stream ([`lora::stream`](crate::lora::stream)), whose CRC-32 covers every payload
//!   byte, for anything that crosses an unreliable link.
//! - **An adapter for a different base with the same shapes** (another fine-tune of the same
//!   architecture) when the file records no fingerprint, as llama.cpp's converter writes them.
//!   edgelora's converter records [`base_fingerprint`](crate::lora::base_fingerprint) and
//!   [`bind`](crate::lora::Adapter::bind) then refuses any other base.
//! - **Numerical garbage.** An adapter whose weights are NaN or 1e38 is well-formed; the
//!   forward pass stays memory-safe and panic-free, and produces NaN or infinite logits. The
//!   sampler still returns a token id in range.
