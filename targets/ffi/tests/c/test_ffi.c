/* Host test of the C API, built with gcc against libedgelora_ffi.a by tests/tests/ffi.rs.
 * Usage: test_ffi BASE.gguf ADAPTER_A.gguf ADAPTER_B.gguf PROMPT
 * Prints "C <name> ids=..." lines for the Rust side to compare, and "C ok" at the end.
 * File reading uses malloc here; the library itself allocates nothing. */
#include "edgelora.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                            \
    do {                                                                       \
        int st_ = (call);                                                      \
        if (st_ != EL_OK) {                                                    \
            char msg_[256];                                                    \
            el_last_error(msg_, sizeof msg_);                                  \
            fprintf(stderr, "%s:%d: %s -> %d (%s): %s\n", __FILE__, __LINE__,  \
                    #call, st_, el_status_str(st_), msg_);                     \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) { perror(path); exit(1); }
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* 8-byte aligned caller memory. */
static void *obj(size_t n) { return aligned_alloc(EL_ALIGN, (n + 7) / 8 * 8); }

static void print_ids(const char *name, const uint32_t *ids, size_t n) {
    printf("C %s ids=", name);
    for (size_t i = 0; i < n; i++) printf("%s%u", i ? "," : "", ids[i]);
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: %s BASE A B PROMPT\n", argv[0]); return 2; }
    size_t base_len, a_len, b_len;
    uint8_t *base = read_file(argv[1], &base_len);
    uint8_t *a_bytes = read_file(argv[2], &a_len);
    uint8_t *b_bytes = read_file(argv[3], &b_len);
    const char *prompt = argv[4];

    el_model *m;
    CHECK(el_model_open(obj(el_model_size()), el_model_size(), base, base_len, &m));
    el_model_info info;
    CHECK(el_model_get_info(m, &info));
    printf("C info layers=%u dim=%u vocab=%u ctx=%u\n", info.n_layers, info.dim, info.vocab, info.ctx_len);

    const uint32_t ctx = 128;
    size_t ssz = el_state_size(m, ctx);
    el_state *s;
    CHECK(el_state_init(m, ctx, obj(ssz), ssz, &s));

    size_t words;
    CHECK(el_tokenizer_scratch_words(m, &words));
    el_tokenizer *tok;
    uint32_t *scratch = malloc(words * sizeof *scratch);
    CHECK(el_tokenizer_open(m, scratch, words, obj(el_tokenizer_size()), el_tokenizer_size(), &tok));
    uint32_t ids[512];
    size_t n_ids;
    CHECK(el_tokenize(tok, prompt, strlen(prompt), 1, ids, 512, &n_ids));
    print_ids("prompt", ids, n_ids);

    uint32_t out[16];
    size_t n_out;
    CHECK(el_generate(m, s, ids, n_ids, out, 16, EL_NO_EOS, &n_out));
    print_ids("base", out, n_out);
    char text[256];
    size_t tlen;
    CHECK(el_detokenize(tok, out, n_out, text, sizeof text, &tlen));
    printf("C base text_bytes=%zu\n", tlen);

    /* el_prefill: the prompt in one call gives the same logits, bit for bit, as el_forward
     * token by token; el_state_clear empties the cache (position 1 is then past it). */
    {
        const float *lp, *lf;
        size_t nvp, nvf;
        static float keep[65536];
        CHECK(el_state_clear(s));
        CHECK(el_prefill(m, s, ids, n_ids, 0, &lp, &nvp));
        if (nvp != info.vocab || nvp > 65536) return 1;
        memcpy(keep, lp, nvp * sizeof *lp);
        CHECK(el_state_clear(s));
        if (el_forward(m, s, ids[1], 1, &lf, &nvf) == EL_OK) {
            fprintf(stderr, "el_state_clear: position 1 accepted on an empty cache\n");
            return 1;
        }
        for (size_t i = 0; i < n_ids; i++) CHECK(el_forward(m, s, ids[i], (uint32_t)i, &lf, &nvf));
        if (nvf != nvp || memcmp(keep, lf, nvp * sizeof *lf) != 0) {
            fprintf(stderr, "el_prefill and el_forward logits differ\n");
            return 1;
        }
        if (el_prefill(m, s, ids, 0, 0, &lp, &nvp) != EL_ERR_ARG) return 1;
    }
    /* Sizes and flags the new queries report. */
    {
        size_t data = el_state_data_size(m, ctx);
        int add_bos;
        uint32_t eos;
        CHECK(el_tokenizer_add_bos(tok, &add_bos));
        CHECK(el_tokenizer_eos(tok, &eos));
        printf("C ffn=%u state_data=%zu add_bos=%d eos_is_eog=%d\n", el_model_ffn_dim(m), data, add_bos,
               el_tokenizer_is_eog(tok, eos));
        if (data == 0 || data >= ssz || el_model_ffn_dim(NULL) != 0 || el_tokenizer_is_eog(NULL, eos) != 0)
            return 1;
    }
    /* The streaming decoder gives el_detokenize's text token by token, keeping the leading
     * space a SentencePiece vocabulary puts first (el_detokenize drops it). */
    {
        el_decoder *dec;
        char dtext[256], piece[64];
        size_t dlen = 0, k;
        CHECK(el_decoder_begin(tok, obj(el_decoder_size()), el_decoder_size(), &dec));
        for (size_t i = 0; i < n_out; i++) {
            CHECK(el_decoder_push(dec, out[i], piece, sizeof piece, &k));
            if (dlen + k > sizeof dtext) return 1;
            memcpy(dtext + dlen, piece, k);
            dlen += k;
        }
        CHECK(el_decoder_finish(dec, piece, sizeof piece, &k));
        memcpy(dtext + dlen, piece, k);
        dlen += k;
        printf("C decoder text_bytes=%zu\n", dlen);
        if (dlen < tlen || dlen > tlen + 1 || memcmp(dtext + (dlen - tlen), text, tlen) != 0) {
            fprintf(stderr, "decoder text differs from el_detokenize\n");
            return 1;
        }
        if (el_decoder_push(dec, info.vocab, piece, sizeof piece, &k) != EL_ERR_ARG) return 1;
        /* No room: an error, or nothing to write (a token that only starts a character). */
        k = 1;
        int st0 = el_decoder_push(dec, out[0], NULL, 0, &k);
        if (!(st0 == EL_ERR_BUFFER || (st0 == EL_OK && k == 0))) return 1;
    }

    /* The end token stops generation and is not written: with eos = out[2], the output is
     * the ids before its first occurrence. */
    {
        uint32_t eos = out[2], cut[16];
        size_t k = 0, n_cut;
        while (out[k] != eos) k++;
        CHECK(el_generate(m, s, ids, n_ids, cut, 16, eos, &n_cut));
        if (n_cut != k || memcmp(cut, out, k * sizeof *out) != 0) {
            fprintf(stderr, "eos: got %zu ids, want %zu\n", n_cut, k);
            return 1;
        }
    }

    size_t asz = el_adapter_size(m);
    el_adapter *a, *b, *bs;
    CHECK(el_adapter_load(m, a_bytes, a_len, obj(asz), asz, &a));
    CHECK(el_adapter_load(m, b_bytes, b_len, obj(asz), asz, &b));
    float one = 1.0f;
    CHECK(el_set_adapters(s, (const el_adapter *const *)&a, &one, 1));
    CHECK(el_generate(m, s, ids, n_ids, out, 16, EL_NO_EOS, &n_out));
    print_ids("lora_a", out, n_out);
    CHECK(el_set_adapters(s, (const el_adapter *const *)&b, &one, 1));
    CHECK(el_generate(m, s, ids, n_ids, out, 16, EL_NO_EOS, &n_out));
    print_ids("lora_b", out, n_out);

    /* Errors come back as codes with messages, and B stays active. */
    int st = el_model_open(obj(el_model_size()), el_model_size(), a_bytes, a_len, &m);
    char msg[256];
    el_last_error(msg, sizeof msg);
    printf("C reject model_from_adapter status=%d msg=%s\n", st, msg);
    if (st == EL_OK) return 1;
    const float *logits;
    size_t nv;
    st = el_forward(m, s, 0, ctx, &logits, &nv);
    el_last_error(msg, sizeof msg);
    printf("C reject context_overflow status=%d msg=%s\n", st, msg);
    if (st != EL_ERR_CONTEXT) return 1;
    st = el_model_open((char *)obj(el_model_size() + 8) + 1, el_model_size(), base, base_len, &m);
    printf("C reject misaligned status=%d\n", st);
    if (st != EL_ERR_BUFFER) return 1;

    /* Stream A in 61-byte chunks (a 24-byte ELAS frame header built here), then use it. */
    uint8_t *rx = malloc(a_len);
    el_stream *stream;
    CHECK(el_stream_begin(obj(el_stream_size()), el_stream_size(), rx, a_len, &stream));
    /* Frame: "ELAS", version 1, u64 length, CRC-32 of payload, CRC-32 of bytes 0..20. */
    extern uint32_t crc32_ieee(const uint8_t *p, size_t n);
    uint8_t hdr[24] = {'E', 'L', 'A', 'S', 1, 0, 0, 0};
    for (int i = 0; i < 8; i++) hdr[8 + i] = (uint8_t)((uint64_t)a_len >> (8 * i));
    uint32_t c = crc32_ieee(a_bytes, a_len);
    for (int i = 0; i < 4; i++) hdr[16 + i] = (uint8_t)(c >> (8 * i));
    c = crc32_ieee(hdr, 20);
    for (int i = 0; i < 4; i++) hdr[20 + i] = (uint8_t)(c >> (8 * i));
    CHECK(el_stream_push(stream, hdr, 24));
    for (size_t at = 0; at < a_len; at += 61) {
        size_t k = a_len - at < 61 ? a_len - at : 61;
        CHECK(el_stream_push(stream, a_bytes + at, k));
    }
    const uint8_t *payload;
    size_t plen;
    CHECK(el_stream_finish(stream, &payload, &plen));
    CHECK(el_adapter_load(m, payload, plen, obj(asz), asz, &bs));
    CHECK(el_set_adapters(s, (const el_adapter *const *)&bs, &one, 1));
    CHECK(el_generate(m, s, ids, n_ids, out, 16, EL_NO_EOS, &n_out));
    print_ids("stream_a", out, n_out);
    printf("C ok\n");
    return 0;
}

uint32_t crc32_ieee(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    }
    return ~c;
}
