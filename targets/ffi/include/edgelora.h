/* edgelora C API: quantised llama-family models with swappable LoRA adapters.
 *
 * Kept by hand; tests/tests/ffi_header.rs checks every prototype against
 * targets/ffi/src/lib.rs. A complete program: targets/ffi/examples/generate.c (make -C
 * targets/ffi/examples run).
 *
 * MEMORY AND OWNERSHIP
 *   The library allocates nothing and frees nothing; there are no destroy functions.
 *   - Object memory: every object (model, state, adapter, stream, tokenizer) is built inside
 *     memory the caller passes in, at least as large as its size query (el_model_size(),
 *     el_state_size(), el_adapter_size(), el_stream_size(), el_tokenizer_size()) and aligned
 *     to EL_ALIGN (8) bytes. The handle returned through `out` points into that memory. To
 *     "free" an object, stop using it and reuse or release its memory yourself.
 *   - Borrowed bytes: model GGUF bytes, adapter GGUF bytes, the stream receive buffer and the
 *     tokenizer scratch are borrowed, never copied: they must stay in place and unchanged for
 *     as long as any object made from them is used (bytes in flash always do).
 *   - Dependencies: a state, adapter or tokenizer keeps a pointer to its model; a state keeps
 *     pointers to its active adapters. Release nothing before everything built on it.
 *   - Outputs: pointers returned through out-parameters (logits, stream payload) point into
 *     caller memory given earlier and are valid as documented on each function.
 *   On error no object is made, `*out` is left unchanged and nothing the caller owns has been
 *   taken over.
 *
 * ERRORS
 *   Every function that can fail returns a status (EL_OK = 0, EL_ERR_* below). After a
 *   failure, el_last_error() gives a detailed message (which key, tensor or byte offset was
 *   wrong); el_status_str() a short static name for the code. No input reaches a crash: bad
 *   bytes and arguments come back as statuses.
 *
 * THREAD SAFETY
 *   There is no global state besides the last-error message. Calls on different objects may
 *   run concurrently on different threads, including concurrent generation on different
 *   states of the same model (el_model, el_adapter and el_tokenizer are read-only after they
 *   are made, so any number of threads may use them at once). Calls that take a non-const
 *   handle (el_state *, el_stream *, el_decoder *) mutate it: one thread at a time per state,
 *   stream or decoder, and
 *   no el_set_adapters() while that state is generating.
 *   The last-error message is per thread on hosts (the library built with its default `std`
 *   feature): each thread reads back its own last failure. Firmware builds (no_std, no thread
 *   locals) keep one process-wide message: read it from the thread/context that failed before
 *   another call can fail (an interrupt that fails while the message is being written skips
 *   recording its own message).
 *
 * Typical use (sizes and statuses unchecked here for brevity):
 *   el_model_open(mem, el_model_size(), gguf, len, &m);
 *   el_state_init(m, ctx, smem, el_state_size(m, ctx), &s);
 *   el_adapter_load(m, lora, lora_len, amem, el_adapter_size(m), &a);
 *   el_set_adapters(s, &a, &scale, 1);
 *   el_generate(m, s, prompt, n_prompt, out, max_out, eos, &n_out);
 */
#ifndef EDGELORA_H
#define EDGELORA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes: the return value of every int function. */
#define EL_OK 0
#define EL_ERR_NULL 1     /* a required pointer was null */
#define EL_ERR_BUFFER 2   /* caller memory too small or misaligned, or output too short */
#define EL_ERR_FORMAT 3   /* model or adapter bytes malformed or unsupported */
#define EL_ERR_MISMATCH 4 /* adapter does not fit the base model, or handles of different models */
#define EL_ERR_CONTEXT 5  /* position at or past the state's context */
#define EL_ERR_ARG 6      /* invalid argument (token id, scale, too many adapters, ...) */
#define EL_ERR_STREAM 7   /* adapter stream: bad frame, checksum, truncated, too long */

#define EL_MAX_LAYERS 32 /* most layers a model opened here may have */
#define EL_MAX_ACTIVE 4  /* most adapters active at once */
#define EL_ALIGN 8       /* alignment of every object memory */
#define EL_KV_F32 0      /* KV cache of f32 (el_state_init's) */
#define EL_KV_F16 1      /* KV cache of IEEE half: half the RAM (core feature kv-f16) */
#define EL_KV_Q8_0 2     /* KV cache of Q8_0 blocks (core feature kv-q8_0) */
#define EL_NO_EOS 0xFFFFFFFFu /* "no end token" for el_generate / el_tokenizer_eos */

typedef struct el_model el_model;         /* parsed model; read-only once opened */
typedef struct el_state el_state;         /* KV cache, activations, logits, active adapters */
typedef struct el_adapter el_adapter;     /* LoRA adapter bound to one model; read-only */
typedef struct el_stream el_stream;       /* receiver for one framed adapter */
typedef struct el_tokenizer el_tokenizer; /* the model's tokenizer; read-only once opened */
typedef struct el_decoder el_decoder;     /* streaming detokenizer for one sequence */

typedef struct el_model_info {
    uint32_t n_layers; /* transformer blocks */
    uint32_t dim;      /* residual width */
    uint32_t vocab;    /* vocabulary size: logits per forward */
    uint32_t ctx_len;  /* context the model was trained for: the largest ctx el_state_init takes */
} el_model_info;

/* ---- Errors ----------------------------------------------------------------------------- */

/* Short static description of a status code; never NULL, never to be freed. Any value is
 * accepted (unknown codes give "unknown status"). Thread-safe. */
const char *el_status_str(int status);

/* Copy the calling thread's last error message (firmware: the process-wide one) into `buf`,
 * NUL-terminated and truncated to `cap` bytes; returns the message's full length (without
 * the NUL), so a return >= cap means it was truncated; messages are at most 192 bytes. `buf` may
 * be NULL with `cap` 0 to query the length. Not cleared by successful calls: read it right
 * after a failing status. */
size_t el_last_error(char *buf, size_t cap);

/* ---- Model ------------------------------------------------------------------------------ */

/* Bytes of object memory el_model_open needs. Constant for a given library build. */
size_t el_model_size(void);

/* Parse a GGUF model in place into `mem` (>= el_model_size() bytes, EL_ALIGN-aligned) and
 * set `*out`. `gguf` (`gguf_len` bytes) is borrowed: keep it unchanged while the model or
 * anything made from it is used. Errors: EL_ERR_NULL (gguf, out or mem null), EL_ERR_BUFFER
 * (mem small or misaligned), EL_ERR_FORMAT (not a GGUF model, unsupported tensor type or
 * architecture detail), EL_ERR_MISMATCH (unsupported architecture, missing tensor, shapes),
 * EL_ERR_ARG (more layers than EL_MAX_LAYERS, other bad values). On error `*out` is not
 * written. The model object is built directly in `mem`, not on the stack, so the call's
 * stack use does not grow with EL_MAX_LAYERS. */
int el_model_open(void *mem, size_t mem_len, const uint8_t *gguf, size_t gguf_len, el_model **out);

/* Fill `*info` with the model's hyper-parameters. Errors: EL_ERR_NULL. */
int el_model_get_info(const el_model *model, el_model_info *info);

/* Hidden width of the model's feed-forward block; 0 if `model` is NULL. Thread-safe. */
uint32_t el_model_ffn_dim(const el_model *model);

/* ---- State (KV cache, activations, logits) ---------------------------------------------- */

/* Bytes of memory el_state_init needs for `ctx` positions (KV cache included). Returns 0
 * if `model` is NULL or the size would overflow size_t. */
size_t el_state_size(const el_model *model, uint32_t ctx);

/* Make a state for up to `ctx` positions in `mem` (>= el_state_size(model, ctx) bytes,
 * EL_ALIGN-aligned); everything it needs lives inside `mem`. No adapter is active at first.
 * The model must outlive the state. Errors: EL_ERR_NULL, EL_ERR_BUFFER (mem small or
 * misaligned), EL_ERR_ARG (ctx 0, larger than the model's ctx_len, or overflowing). */
int el_state_init(const el_model *model, uint32_t ctx, void *mem, size_t mem_len, el_state **out);

/* Bytes of KV cache, activations and logits inside a state for `ctx` positions: the figure
 * to budget RAM by (el_state_size() less the handle). Returns 0 if `model` is NULL or the size
 * would overflow size_t. Thread-safe. */
size_t el_state_data_size(const el_model *model, uint32_t ctx);

/* el_state_size, el_state_init and el_state_data_size with a KV cache of element type `kv`
 * (EL_KV_F32, EL_KV_F16 or EL_KV_Q8_0). A type this build lacks (the staticlib's `kv-f16` /
 * `kv-q8_0` features) makes el_state_init_kv fail with EL_ERR_ARG, as does an unknown code
 * (for which the size functions return 0). Same ownership and threading as the plain ones. */
size_t el_state_size_kv(const el_model *model, uint32_t ctx, uint32_t kv);
int el_state_init_kv(const el_model *model, uint32_t ctx, uint32_t kv, void *mem, size_t mem_len, el_state **out);
size_t el_state_data_size_kv(const el_model *model, uint32_t ctx, uint32_t kv);

/* Prompt tokens a state of `ctx` positions runs through the layers together on this target:
 * 1 on microcontrollers (token by token, no activations for more), min(16, ctx) on hosts.
 * Thread-safe. */
uint32_t el_state_block(uint32_t ctx);

/* Forget the state's KV cache, O(1): the next el_forward or el_prefill starts at position 0.
 * The active adapters stay active. One thread at a time per state. Errors: EL_ERR_NULL. */
int el_state_clear(el_state *state);

/* ---- Adapters --------------------------------------------------------------------------- */

/* Bytes of memory el_adapter_load needs for any adapter of this model (the per-layer slot
 * table; the tensors stay in the adapter bytes). Returns 0 if `model` is NULL. */
size_t el_adapter_size(const el_model *model);

/* Parse a GGUF LoRA adapter (`len` bytes at `bytes_ptr`, borrowed: keep unchanged while the
 * adapter is used) and bind it to `model` in `mem` (>= el_adapter_size(model) bytes,
 * EL_ALIGN-aligned). Binding checks every tensor's target and shape, and the base
 * fingerprint when the adapter records one. The model must outlive the adapter. Errors:
 * EL_ERR_NULL, EL_ERR_BUFFER, EL_ERR_FORMAT (not a LoRA GGUF), EL_ERR_MISMATCH (made for
 * another base: fingerprint, missing target, shape). */
int el_adapter_load(const el_model *model, const uint8_t *bytes_ptr, size_t len, void *mem, size_t mem_len, el_adapter **out);

/* Make adapters[0..n) with scales[0..n) the active set of `state` (n = 0: base model only;
 * `adapters` and `scales` may then be NULL). O(1): only pointers are stored, so swapping per
 * request is free; the arrays themselves are copied and need not outlive the call, but every
 * adapter must stay valid while it is active. Several active adapters add their deltas.
 * On error the previous set stays active. Not while the state is in use by another thread.
 * Errors: EL_ERR_NULL (state, or an array/adapter with n > 0), EL_ERR_ARG (n > EL_MAX_ACTIVE,
 * non-finite scale), EL_ERR_MISMATCH (an adapter loaded for another model handle). */
int el_set_adapters(el_state *state, const el_adapter *const *adapters, const float *scales, size_t n);

/* ---- Inference -------------------------------------------------------------------------- */

/* Run `token` at position `pos` (0 <= pos <= positions already filled, < ctx) with the
 * state's active adapters. `*logits` is set to `*n_vocab` floats inside the state's memory,
 * valid until the next call that uses this state. Errors: EL_ERR_NULL, EL_ERR_MISMATCH
 * (state made for another model), EL_ERR_CONTEXT (pos >= ctx), EL_ERR_ARG (token >= vocab,
 * pos past the filled positions). */
int el_forward(const el_model *model, el_state *state, uint32_t token, uint32_t pos, const float **logits, size_t *n_vocab);

/* Run the `n` ids of `tokens` at positions pos..pos+n-1 in one call (a prompt: each weight is
 * read once per block of tokens instead of once per token; the logits are bit-identical to
 * el_forward run token by token) with the state's active adapters. Needs pos <= positions
 * already filled (pos 0 after el_state_clear) and pos + n <= ctx. `*logits` is set to the
 * `*n_vocab` logits of the last token, inside the state's memory, valid until the next call
 * that uses this state. On error, positions before the failing block stay filled. One thread
 * at a time per state. Errors: EL_ERR_NULL, EL_ERR_MISMATCH (state made for another model),
 * EL_ERR_CONTEXT (pos + n > ctx), EL_ERR_ARG (n 0, id >= vocab, pos past the filled
 * positions). */
int el_prefill(const el_model *model, el_state *state, const uint32_t *tokens, size_t n, uint32_t pos, const float **logits, size_t *n_vocab);

/* Greedy generation: clear the state, run the `n_prompt` ids of `prompt` (n_prompt >= 1),
 * then write up to `max_out` generated ids to `out`. Generation stops when the next id would
 * be `eos`, which is NOT written (pass EL_NO_EOS to never stop early; el_tokenizer_eos gives
 * the model's), or after `max_out` ids. `*n_out` is the number of ids written, also when an
 * error stops generation part way (the ids before it are valid). Needs
 * n_prompt + max_out - 1 <= ctx. Errors: EL_ERR_NULL (out may be NULL only with max_out 0),
 * EL_ERR_MISMATCH, EL_ERR_CONTEXT (prompt plus output longer than the state's ctx),
 * EL_ERR_ARG (empty prompt, id >= vocab). */
int el_generate(const el_model *model, el_state *state, const uint32_t *prompt, size_t n_prompt, uint32_t *out, size_t max_out, uint32_t eos, size_t *n_out);

/* ---- Adapter streaming (24-byte ELAS frame + GGUF, any chunk sizes) ---------------------- */
/* Frame header, little-endian: "ELAS", u32 version 1, u64 payload length, u32 CRC-32 (IEEE)
 * of the payload, u32 CRC-32 of header bytes 0..20. See lora/stream.rs in the core. */

/* Bytes of object memory el_stream_begin needs. Constant for a given library build. */
size_t el_stream_size(void);

/* Start receiving one framed adapter: the payload will be written to `buf` (`buf_len`
 * bytes: this bounds the adapter size). `buf` belongs to the stream from now on and, once
 * finished, holds the adapter the payload pointer points at: keep it unchanged while that
 * adapter is used. A stream receives one adapter; begin again for the next. Errors:
 * EL_ERR_NULL, EL_ERR_BUFFER (mem small or misaligned). */
int el_stream_begin(void *mem, size_t mem_len, uint8_t *buf, size_t buf_len, el_stream **out);

/* Feed the next `len` bytes (any size, 0 included); `chunk` is copied and can be reused at
 * once. The GGUF header is checked as soon as it is complete. After an error the stream
 * stays failed (every later push and the finish return EL_ERR_STREAM). Errors: EL_ERR_NULL,
 * EL_ERR_STREAM (bad magic/version/header CRC, payload larger than buf, bytes past the end,
 * malformed GGUF header), EL_ERR_ARG (stream already finished). */
int el_stream_push(el_stream *stream, const uint8_t *chunk, size_t len);

/* Verify the payload CRC and the whole adapter, and set `*payload`/`*len` to the adapter
 * bytes inside `buf`, ready for el_adapter_load. The stream is finished either way: on
 * error nothing is handed out, and an adapter that was active elsewhere is unaffected (only
 * swap after this returns EL_OK). Errors: EL_ERR_NULL, EL_ERR_STREAM (truncated, checksum
 * mismatch, malformed adapter), EL_ERR_ARG (already finished). */
int el_stream_finish(el_stream *stream, const uint8_t **payload, size_t *len);

/* ---- Tokenizer -------------------------------------------------------------------------- */

/* Number of uint32_t words of scratch the model's tokenizer needs, in `*words`. Errors:
 * EL_ERR_NULL, EL_ERR_FORMAT (no or malformed tokenizer metadata). */
int el_tokenizer_scratch_words(const el_model *model, size_t *words);

/* Bytes of object memory el_tokenizer_open needs (besides the scratch). Constant. */
size_t el_tokenizer_size(void);

/* Build the model's tokenizer in `mem` (>= el_tokenizer_size(), EL_ALIGN-aligned) with its
 * indexes in `scratch` (`words` >= el_tokenizer_scratch_words; owned by the tokenizer for
 * its lifetime). The model must outlive it. Errors: EL_ERR_NULL, EL_ERR_BUFFER (mem or
 * scratch too small), EL_ERR_FORMAT. */
int el_tokenizer_open(const el_model *model, uint32_t *scratch, size_t words, void *mem, size_t mem_len, el_tokenizer **out);

/* The vocabulary's end-of-sequence id in `*eos`, or EL_NO_EOS if it has none: the value to
 * pass to el_generate. Errors: EL_ERR_NULL. */
int el_tokenizer_eos(const el_tokenizer *tok, uint32_t *eos);

/* Whether the model asks for BOS in front of a prompt (its tokenizer.ggml.add_bos_token), in
 * `*add_bos`: 1 or 0; pass it to el_tokenize. Thread-safe. Errors: EL_ERR_NULL. */
int el_tokenizer_add_bos(const el_tokenizer *tok, int *add_bos);

/* 1 if `id` ends generation (EOS, EOT, <|im_end|>, <end_of_turn>, ...: llama.cpp's
 * end-of-generation list, wider than el_tokenizer_eos), else 0; 0 if `tok` is NULL.
 * Thread-safe. */
int el_tokenizer_is_eog(const el_tokenizer *tok, uint32_t id);

/* Encode `len` bytes of UTF-8 `text` (no NUL needed; special tokens such as </s> are
 * parsed), with BOS first if `add_bos` is nonzero and the vocabulary has one. Writes `*n`
 * ids to `out`. `out` is also working memory: `cap` >= 10 * len + 16 always suffices.
 * Errors: EL_ERR_NULL, EL_ERR_ARG (not UTF-8), EL_ERR_BUFFER (cap too small). */
int el_tokenize(const el_tokenizer *tok, const char *text, size_t len, int add_bos, uint32_t *out, size_t cap, size_t *n);

/* Decode `n` ids to UTF-8 in `out` (`cap` bytes; NUL-terminated, so at most cap - 1 text
 * bytes); `*len` is the text length without the NUL. Errors: EL_ERR_NULL, EL_ERR_ARG (id >=
 * vocab), EL_ERR_BUFFER (text does not fit). */
int el_detokenize(const el_tokenizer *tok, const uint32_t *ids, size_t n, char *out, size_t cap, size_t *len);

/* ---- Streaming decoder (text token by token, e.g. straight out of a UART) --------------- */

/* Bytes of object memory el_decoder_begin needs. Constant for a given library build. */
size_t el_decoder_size(void);

/* Start decoding one sequence into `mem` (>= el_decoder_size() bytes, EL_ALIGN-aligned):
 * every token is rendered (special ones included) and nothing is stripped, unlike
 * el_detokenize, which drops the leading space a SentencePiece vocabulary adds. The
 * tokenizer must outlive the decoder. The decoder holds the bytes of a character split
 * across tokens until it is complete; nothing else. One thread at a time per decoder; any
 * number of decoders may share a tokenizer. Errors: EL_ERR_NULL, EL_ERR_BUFFER (mem small or
 * misaligned). */
int el_decoder_begin(const el_tokenizer *tok, void *mem, size_t mem_len, el_decoder **out);

/* Decode `id`: write the UTF-8 text it completes to `out` (`cap` bytes; NOT NUL-terminated)
 * and its length to `*len` (0 when the token only starts a character). Always whole
 * characters, so every chunk can be printed as it comes. 3 * (longest token text) + 3 bytes
 * always suffice; 64 is plenty for byte-level and SentencePiece vocabularies. On error
 * nothing is written and the decoder is unchanged (on EL_ERR_BUFFER: print what you have and
 * push the same id again). Errors: EL_ERR_NULL (`out` may be NULL only with cap 0),
 * EL_ERR_ARG (id >= vocab), EL_ERR_BUFFER (text does not fit). */
int el_decoder_push(el_decoder *dec, uint32_t id, char *out, size_t cap, size_t *len);

/* End of the sequence: an incomplete character still held back becomes U+FFFD (3 bytes) in
 * `out` (not NUL-terminated); `*len` is 0 or 3. The decoder can then decode a new sequence.
 * Errors: EL_ERR_NULL, EL_ERR_BUFFER (cap < 3 while a character is pending; unchanged). */
int el_decoder_finish(el_decoder *dec, char *out, size_t cap, size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* EDGELORA_H */
