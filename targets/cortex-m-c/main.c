/* edgelora from C on a Cortex-M4F (QEMU mps2-an386): the Rust firmware's scenario
 * (targets/cortex-m/src/scenario.rs) through the C API (targets/ffi/include/edgelora.h).
 *
 * The tiny model and two LoRA adapters are in flash (assets.S). Greedy generation from a
 * prompt with the base, with adapter A, with B (a swap is one el_set_adapters call), with A
 * and B mixed; then bad input while B is active (a corrupted, a truncated and an oversized
 * adapter stream, an adapter for another base, a context overflow, a token out of range), each
 * of which must come back as a status with B still giving B's answer; then B streamed in
 * 61-byte chunks, as a UART driver might hand them over, bound and checked against B from
 * flash. Every step prints the `EL ...` line the Rust firmware prints, and
 * tests/tests/firmware_c.rs compares them with the host's, logits hashes included.
 *
 * Memory: the library allocates nothing. Every object lives in memory taken from the arena
 * (the RAM after .bss, see an386.ld) at the size the library's el_*_size queries give; the
 * model and adapters are read in place from flash.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "config.h"
#include "edgelora.h"

/* assets.S */
extern const uint8_t el_asset_base[], el_asset_base_end[];
extern const uint8_t el_asset_adapter_a[], el_asset_adapter_a_end[];
extern const uint8_t el_asset_adapter_b[], el_asset_adapter_b_end[];
extern const uint8_t el_asset_adapter_wrong[], el_asset_adapter_wrong_end[];

#define ASSET_LEN(name) ((size_t)(name##_end - name))

/* Bytes per chunk when streaming an adapter: odd on purpose, so that chunks straddle the frame
 * header, the GGUF header and every field (scenario.rs's CHUNK). */
#define CHUNK 61
/* Room for a run's decoded text; longer text is cut at a whole character, as the Rust
 * scenario's Text<256> does. */
#define TEXT_CAP 256
/* ELAS frame header (lora/stream.rs in the core): "ELAS", u32 version 1, u64 payload length,
 * u32 CRC-32 of the payload, u32 CRC-32 of header bytes 0..20, all little-endian. */
#define FRAME_HEADER 24

static const el_model *model;
static el_state *state;
static const el_tokenizer *tok;
static uint32_t vocab;
static uint32_t prompt_ids[10 * (sizeof EL_PROMPT - 1) + 16]; /* el_tokenize's bound */
static size_t n_prompt;
static uint32_t gen[EL_N_GEN];
static void *decoder_mem;

/* ---- failure reporting ------------------------------------------------------------------- */

/* Print `EL-FAIL <step>: <status>: <last error>` and stop with a failure status. */
static void fail(const char *step, int status) __attribute__((noreturn));
static void fail(const char *step, int status)
{
    char msg[200];
    el_last_error(msg, sizeof msg);
    out_str("EL-FAIL ");
    out_str(step);
    out_str(": ");
    out_str(el_status_str(status));
    out_str(": ");
    out_str(msg);
    out_nl();
    board_exit(0);
}

static void check(int status, const char *step)
{
    if (status != EL_OK)
        fail(step, status);
}

static void fail_check(const char *what) __attribute__((noreturn));
static void fail_check(const char *what)
{
    out_str("EL-FAIL check failed: ");
    out_str(what);
    out_nl();
    board_exit(0);
}

static void *take(size_t bytes, const char *what)
{
    void *p = arena_take(bytes);
    if (p == NULL || bytes == 0)
        fail_check(what);
    return p;
}

static void out_ids(const uint32_t *ids, size_t n)
{
    out_str("[");
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            out_str(",");
        out_u32(ids[i]);
    }
    out_str("]");
}

/* ---- generation -------------------------------------------------------------------------- */

/* FNV-1a over the bytes of every logit of a run (f32 bits, little-endian, as the core's
 * to_bits().to_le_bytes()): equal hashes mean bit-identical logits at every step. */
static uint32_t fnv(uint32_t h, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], sizeof bits);
        for (int k = 0; k < 4; k++, bits >>= 8)
            h = (h ^ (bits & 0xFFu)) * 0x01000193u;
    }
    return h;
}

/* The first index of the largest logit (edgelora::sample::argmax: NaNs never win). */
static uint32_t argmax(const float *x, size_t n)
{
    uint32_t best = 0;
    float bv = -__builtin_inff();
    for (size_t i = 0; i < n; i++) {
        if (x[i] > bv) {
            bv = x[i];
            best = (uint32_t)i;
        }
    }
    return best;
}

/* Greedy generation from the prompt at position 0 with the state's active adapters: up to
 * EL_N_GEN ids, the end-of-generation token included if it comes. Returns the count and sets
 * the hash of every logit. el_generate would give the same ids, but not the logits hash. */
static size_t generate(uint32_t *hash)
{
    const float *logits;
    size_t nv;
    uint32_t h = 0x811c9dc5u;
    size_t n = 0;
    check(el_state_clear(state), "generate");
    check(el_prefill(model, state, prompt_ids, n_prompt, 0, &logits, &nv), "generate");
    for (;;) {
        h = fnv(h, logits, nv);
        uint32_t t = argmax(logits, nv);
        gen[n++] = t;
        if (n == EL_N_GEN || el_tokenizer_is_eog(tok, t))
            break;
        check(el_forward(model, state, t, (uint32_t)(n_prompt + n - 1), &logits, &nv), "generate");
    }
    *hash = h;
    return n;
}

/* Length of the UTF-8 character starting with byte `b`. */
static size_t utf8_len(unsigned char b) { return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4; }

/* Generate and print one `EL run <name> ids=[..] hash=.. text=".."` line; returns the hash. */
static uint32_t run_line(const char *name)
{
    uint32_t hash;
    size_t n = generate(&hash);

    char text[TEXT_CAP];
    size_t len = 0;
    char piece[64];
    size_t k;
    el_decoder *dec;
    check(el_decoder_begin(tok, decoder_mem, el_decoder_size(), &dec), "decode");
    for (size_t i = 0; i <= n; i++) {
        if (i < n)
            check(el_decoder_push(dec, gen[i], piece, sizeof piece, &k), "decode");
        else
            check(el_decoder_finish(dec, piece, sizeof piece, &k), "decode");
        /* Keep whole characters while they fit. */
        for (size_t at = 0; at < k;) {
            size_t c = utf8_len((unsigned char)piece[at]);
            if (len + c > TEXT_CAP)
                break;
            memcpy(text + len, piece + at, c);
            len += c;
            at += c;
        }
    }

    out_str("EL run ");
    out_str(name);
    out_str(" ids=");
    out_ids(gen, n);
    out_str(" hash=");
    out_hex8(hash);
    out_str(" text=");
    out_debug_str(text, len);
    out_nl();
    return hash;
}

static void activate(const el_adapter *a, const el_adapter *b, float sa, float sb)
{
    const el_adapter *set[2] = {a, b};
    const float scales[2] = {sa, sb};
    size_t n = a == NULL ? 0 : b == NULL ? 1 : 2;
    check(el_set_adapters(state, set, scales, n), "set adapters");
}

/* ---- adapter streaming ------------------------------------------------------------------- */

/* CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), bit by bit: this is the sender's
 * side of the frame, built here from the format's description rather than from the library,
 * so the test also checks that the documented format is the one the receiver accepts. */
static uint32_t crc32(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int b = 0; b < 8; b++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void put_le(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

static void *stream_mem;
static uint8_t *stream_buf;
static size_t stream_cap;

/* Stream `payload` framed, in CHUNK-byte pieces, flipping one payload byte (flip_at) or
 * stopping after `stop_at` bytes of the framed stream (SIZE_MAX: neither). On success prints
 * the `EL stream` line and hands out the verified adapter bytes. Returns the first failing
 * status (its message in el_last_error). */
static int stream_in(const uint8_t *payload, size_t len, size_t flip_at, size_t stop_at, const uint8_t **got,
                     size_t *got_len)
{
    uint8_t header[FRAME_HEADER];
    memcpy(header, "ELAS", 4);
    put_le(header + 4, 1, 4);
    put_le(header + 8, len, 8);
    put_le(header + 16, crc32(0, payload, len), 4);
    put_le(header + 20, crc32(0, header, 20), 4);

    el_stream *s;
    int st = el_stream_begin(stream_mem, el_stream_size(), stream_buf, stream_cap, &s);
    if (st != EL_OK)
        return st;
    size_t total = FRAME_HEADER + len;
    size_t end = stop_at < total ? stop_at : total;
    uint8_t chunk[CHUNK];
    uint32_t chunks = 0;
    for (size_t at = 0; at < end;) {
        size_t n = end - at < CHUNK ? end - at : CHUNK;
        for (size_t i = 0; i < n; i++) {
            size_t k = at + i;
            chunk[i] = k < FRAME_HEADER ? header[k] : payload[k - FRAME_HEADER];
            if (flip_at != SIZE_MAX && k == flip_at + FRAME_HEADER)
                chunk[i] ^= 0x40;
        }
        st = el_stream_push(s, chunk, n);
        if (st != EL_OK)
            return st;
        at += n;
        chunks++;
    }
    st = el_stream_finish(s, got, got_len);
    if (st != EL_OK)
        return st;
    out_str("EL stream bytes=");
    out_u32((uint32_t)total);
    out_str(" chunks=");
    out_u32(chunks);
    out_str(" payload=");
    out_u32((uint32_t)*got_len);
    out_nl();
    return EL_OK;
}

/* Bad input must come back as an error status: print `EL reject <what>: <message>`. */
static void reject(const char *what, int status)
{
    char msg[200];
    if (status == EL_OK)
        fail_check("bad input was accepted");
    el_last_error(msg, sizeof msg);
    out_str("EL reject ");
    out_str(what);
    out_str(": ");
    out_str(msg);
    out_nl();
}

/* ---- the scenario ------------------------------------------------------------------------ */

int main(void)
{
    stack_paint();
    out_str("EL-BOARD an386 firmware=c");
    out_nl();

    /* Model, read in place from flash. */
    el_model *m;
    void *mem = take(el_model_size(), "arena: model");
    check(el_model_open(mem, el_model_size(), el_asset_base, ASSET_LEN(el_asset_base), &m), "load model");
    model = m;
    el_model_info info;
    check(el_model_get_info(model, &info), "model info");
    vocab = info.vocab;
    out_str("EL model layers=");
    out_u32(info.n_layers);
    out_str(" dim=");
    out_u32(info.dim);
    out_str(" ffn=");
    out_u32(el_model_ffn_dim(model));
    out_str(" vocab=");
    out_u32(info.vocab);
    out_str(" ctx=");
    out_u32(EL_CTX);
    out_str(" kv=" EL_KV_NAME " block=");
    out_u32(el_state_block(EL_CTX));
    out_str(" state_bytes=");
    out_u32((uint32_t)el_state_data_size_kv(model, EL_CTX, EL_KV));
    out_nl();

    /* Tokenizer: its index lives in scratch words from the arena. */
    size_t words;
    check(el_tokenizer_scratch_words(model, &words), "tokenizer");
    uint32_t *scratch = take(words * sizeof(uint32_t), "arena: tokenizer scratch");
    el_tokenizer *t;
    mem = take(el_tokenizer_size(), "arena: tokenizer");
    check(el_tokenizer_open(model, scratch, words, mem, el_tokenizer_size(), &t), "tokenizer");
    tok = t;
    decoder_mem = take(el_decoder_size(), "arena: decoder");
    int add_bos;
    check(el_tokenizer_add_bos(tok, &add_bos), "tokenizer");
    check(el_tokenize(tok, EL_PROMPT, sizeof EL_PROMPT - 1, add_bos, prompt_ids,
                      sizeof prompt_ids / sizeof prompt_ids[0], &n_prompt),
          "encode prompt");
    out_str("EL prompt ");
    out_debug_str(EL_PROMPT, sizeof EL_PROMPT - 1);
    out_str(" ids=");
    out_ids(prompt_ids, n_prompt);
    out_nl();

    /* State: KV cache, activations and logits, all inside its memory. */
    size_t state_len = el_state_size_kv(model, EL_CTX, EL_KV);
    mem = take(state_len, "arena: state");
    check(el_state_init_kv(model, EL_CTX, EL_KV, mem, state_len, &state), "state");
    uint32_t h_base = run_line("base");

    /* Adapters A and B, bound side by side; a swap is choosing another active set. */
    size_t adapter_len = el_adapter_size(model);
    el_adapter *a, *b;
    mem = take(adapter_len, "arena: adapter A");
    check(el_adapter_load(model, el_asset_adapter_a, ASSET_LEN(el_asset_adapter_a), mem, adapter_len, &a),
          "bind adapter A");
    activate(a, NULL, 1.0f, 0.0f);
    uint32_t h_a = run_line("lora_a");
    mem = take(adapter_len, "arena: adapter B");
    check(el_adapter_load(model, el_asset_adapter_b, ASSET_LEN(el_asset_adapter_b), mem, adapter_len, &b),
          "bind adapter B");
    activate(b, NULL, 1.0f, 0.0f);
    uint32_t h_b = run_line("lora_b");
    if (h_a == h_base || h_b == h_base || h_a == h_b)
        fail_check("adapters must change the output");
    activate(a, b, 0.5f, 0.5f);
    run_line("mix_a0.5_b0.5");

    /* Bad input while B is active: every one is an error status, and B stays in place. The
     * receive buffer holds the larger adapter, rounded up to 32 bytes. */
    activate(b, NULL, 1.0f, 0.0f);
    size_t la = ASSET_LEN(el_asset_adapter_a), lb = ASSET_LEN(el_asset_adapter_b);
    stream_cap = ((la > lb ? la : lb) + 31u) & ~(size_t)31u;
    stream_buf = take(stream_cap, "arena: stream buffer");
    stream_mem = take(el_stream_size(), "arena: stream");
    const uint8_t *got;
    size_t got_len;
    size_t half = lb / 2;
    reject("corrupt_stream", stream_in(el_asset_adapter_b, lb, half, SIZE_MAX, &got, &got_len));
    reject("truncated_stream", stream_in(el_asset_adapter_b, lb, SIZE_MAX, half, &got, &got_len));
    reject("oversized_stream",
           stream_in(el_asset_base, ASSET_LEN(el_asset_base), SIZE_MAX, 64, &got, &got_len));
    void *slot_mem = take(adapter_len, "arena: streamed adapter");
    el_adapter *w;
    reject("wrong_base", el_adapter_load(model, el_asset_adapter_wrong, ASSET_LEN(el_asset_adapter_wrong),
                                         slot_mem, adapter_len, &w));
    const float *logits;
    size_t nv;
    reject("context_overflow", el_forward(model, state, 0, EL_CTX, &logits, &nv));
    const uint32_t one[1] = {0};
    reject("prompt_past_context", el_prefill(model, state, one, 1, EL_CTX, &logits, &nv));
    reject("token_out_of_range", el_forward(model, state, vocab, 0, &logits, &nv));
    if (run_line("lora_b_kept") != h_b)
        fail_check("adapter B changed after rejected input");

    /* Stream B in chunks into the receive buffer, bind it where the wrong-base adapter was
     * refused, and swap to it. */
    check(stream_in(el_asset_adapter_b, lb, SIZE_MAX, SIZE_MAX, &got, &got_len), "stream adapter");
    el_adapter *s;
    check(el_adapter_load(model, got, got_len, slot_mem, adapter_len, &s), "bind streamed adapter");
    activate(s, NULL, 1.0f, 0.0f);
    if (run_line("stream_b") != h_b)
        fail_check("streamed adapter differs from the same adapter in flash");
    out_str("EL scenario ok");
    out_nl();
    print_budget();
    return 0;
}
