/* edgelora C API: quantised llama-family models with swappable LoRA adapters.
 *
 * Kept by hand; tests/tests/ffi_header.rs checks every prototype against
 * targets/ffi/src/lib.rs. Nothing allocates: each object lives in caller memory sized by
 * its el_*_size() query and 8-byte aligned. Model, adapter and stream bytes are borrowed
 * (not copied) and must stay unchanged while in use. Every function returns a status
 * (EL_OK = 0); el_last_error() gives the detailed message of the last failure.
 *
 * Typical use:
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

#define EL_OK 0
#define EL_ERR_NULL 1     /* a required pointer was null */
#define EL_ERR_BUFFER 2   /* caller memory too small or misaligned, or output too short */
#define EL_ERR_FORMAT 3   /* model or adapter bytes malformed or unsupported */
#define EL_ERR_MISMATCH 4 /* adapter does not fit the base model */
#define EL_ERR_CONTEXT 5  /* position at or past the state's context */
#define EL_ERR_ARG 6      /* invalid argument (token id, scale, too many adapters, ...) */
#define EL_ERR_STREAM 7   /* adapter stream: bad frame, checksum, truncated, too long */

#define EL_MAX_LAYERS 32 /* most layers a model opened here may have */
#define EL_MAX_ACTIVE 4  /* most adapters active at once */
#define EL_ALIGN 8       /* alignment of every object memory */
#define EL_NO_EOS 0xFFFFFFFFu

typedef struct el_model el_model;
typedef struct el_state el_state;
typedef struct el_adapter el_adapter;
typedef struct el_stream el_stream;
typedef struct el_tokenizer el_tokenizer;

typedef struct el_model_info {
    uint32_t n_layers;
    uint32_t dim;
    uint32_t vocab;
    uint32_t ctx_len;
} el_model_info;

/* Errors */
const char *el_status_str(int status);
size_t el_last_error(char *buf, size_t cap);

/* Model */
size_t el_model_size(void);
int el_model_open(void *mem, size_t mem_len, const uint8_t *gguf, size_t gguf_len, el_model **out);
int el_model_get_info(const el_model *model, el_model_info *info);

/* State (KV cache, activations, logits) */
size_t el_state_size(const el_model *model, uint32_t ctx);
int el_state_init(const el_model *model, uint32_t ctx, void *mem, size_t mem_len, el_state **out);

/* Adapters */
size_t el_adapter_size(const el_model *model);
int el_adapter_load(const el_model *model, const uint8_t *bytes_ptr, size_t len, void *mem, size_t mem_len, el_adapter **out);
int el_set_adapters(el_state *state, const el_adapter *const *adapters, const float *scales, size_t n);

/* Inference */
int el_forward(const el_model *model, el_state *state, uint32_t token, uint32_t pos, const float **logits, size_t *n_vocab);
int el_generate(const el_model *model, el_state *state, const uint32_t *prompt, size_t n_prompt, uint32_t *out, size_t max_out, uint32_t eos, size_t *n_out);

/* Adapter streaming (24-byte ELAS frame + GGUF, any chunk sizes) */
size_t el_stream_size(void);
int el_stream_begin(void *mem, size_t mem_len, uint8_t *buf, size_t buf_len, el_stream **out);
int el_stream_push(el_stream *stream, const uint8_t *chunk, size_t len);
int el_stream_finish(el_stream *stream, const uint8_t **payload, size_t *len);

/* Tokenizer */
int el_tokenizer_scratch_words(const el_model *model, size_t *words);
size_t el_tokenizer_size(void);
int el_tokenizer_open(const el_model *model, uint32_t *scratch, size_t words, void *mem, size_t mem_len, el_tokenizer **out);
int el_tokenize(const el_tokenizer *tok, const char *text, size_t len, int add_bos, uint32_t *out, size_t cap, size_t *n);
int el_detokenize(const el_tokenizer *tok, const uint32_t *ids, size_t n, char *out, size_t cap, size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* EDGELORA_H */
