/* edgelora from C: load a model and two LoRA adapters, generate with one, swap, generate
 * with the other. Each prompt gets a newline appended (the format the tiny task adapters
 * were trained on: "task: input\n").
 *
 *   make -C targets/ffi/examples run        (builds the staticlib with cargo, then this)
 *   ./generate MODEL.gguf ADAPTER1.gguf PROMPT1 ADAPTER2.gguf PROMPT2
 *
 * Memory is what a firmware image would use: one static, 8-byte aligned arena, carved up
 * with the library's size queries. The library allocates nothing; the only host-specific
 * part is reading the files (on a device the GGUF bytes would be a const array in flash and
 * the adapters would arrive through el_stream_*). */
#include "edgelora.h"
#include <stdio.h>
#include <string.h>

#define ARENA_BYTES (4u << 20) /* files + objects; the tiny model needs about 1.5 MiB */
#define CTX 128u               /* positions per state: prompt + generated tokens */
#define MAX_OUT 48u

static _Alignas(EL_ALIGN) uint8_t arena[ARENA_BYTES];
static size_t arena_used;

/* Take `n` bytes of the arena, EL_ALIGN-aligned; NULL when it is full. */
static void *take(size_t n) {
    size_t at = (arena_used + EL_ALIGN - 1) / EL_ALIGN * EL_ALIGN;
    if (n > ARENA_BYTES - at) return NULL;
    arena_used = at + n;
    return arena + at;
}

/* Read a whole file into the arena. */
static const uint8_t *load(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return NULL; }
    uint8_t *dst = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (dst = take((size_t)n)) != NULL &&
            fread(dst, 1, (size_t)n, f) == (size_t)n) {
            *len = (size_t)n;
        } else {
            fprintf(stderr, "%s: cannot read (or arena full)\n", path);
            dst = NULL;
        }
    }
    fclose(f);
    return dst;
}

/* Print a failed call with the library's message and leave main. */
#define TRY(call)                                                              \
    do {                                                                       \
        int st_ = (call);                                                      \
        if (st_ != EL_OK) {                                                    \
            char msg_[192];                                                    \
            el_last_error(msg_, sizeof msg_);                                  \
            fprintf(stderr, "%s failed: %s: %s\n", #call, el_status_str(st_), \
                    msg_);                                                     \
            return 1;                                                          \
        }                                                                      \
    } while (0)

/* Tokenize `prompt` plus a newline (the tiny task adapters were trained on "task: input\n"),
 * generate greedily with the state's active adapters, print the text. */
static int answer(const el_model *m, el_state *s, const el_tokenizer *tok, const char *prompt) {
    static uint32_t ids[10 * 257 + 16], out[MAX_OUT];
    static char line[258], text[1024];
    size_t len = strlen(prompt), n_ids, n_out, n_text;
    uint32_t eos;
    if (len > 256) { fprintf(stderr, "prompt too long\n"); return 1; }
    memcpy(line, prompt, len);
    line[len++] = '\n';
    TRY(el_tokenize(tok, line, len, 1, ids, sizeof ids / sizeof ids[0], &n_ids));
    TRY(el_tokenizer_eos(tok, &eos));
    size_t max_out = n_ids < CTX ? CTX - n_ids : 0;
    if (max_out > MAX_OUT) max_out = MAX_OUT;
    TRY(el_generate(m, s, ids, n_ids, out, max_out, eos, &n_out));
    TRY(el_detokenize(tok, out, n_out, text, sizeof text, &n_text));
    while (n_text > 0 && text[n_text - 1] == '\n') text[--n_text] = '\0';
    printf("%s -> %s\n", prompt, text);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL.gguf ADAPTER1.gguf PROMPT1 ADAPTER2.gguf PROMPT2\n",
                argv[0]);
        return 2;
    }
    size_t model_len, a1_len, a2_len;
    const uint8_t *model_bytes = load(argv[1], &model_len);
    const uint8_t *a1_bytes = load(argv[2], &a1_len);
    const uint8_t *a2_bytes = load(argv[4], &a2_len);
    if (!model_bytes || !a1_bytes || !a2_bytes) return 1;

    /* Model, tokenizer, state: each in arena memory sized by its query. */
    el_model *m;
    TRY(el_model_open(take(el_model_size()), el_model_size(), model_bytes, model_len, &m));
    el_model_info info;
    TRY(el_model_get_info(m, &info));
    printf("model: %u layers, dim %u, vocab %u\n", info.n_layers, info.dim, info.vocab);

    size_t words;
    TRY(el_tokenizer_scratch_words(m, &words));
    uint32_t *scratch = take(words * sizeof(uint32_t));
    el_tokenizer *tok;
    TRY(el_tokenizer_open(m, scratch, words, take(el_tokenizer_size()), el_tokenizer_size(), &tok));

    size_t state_len = el_state_size(m, CTX);
    el_state *s;
    TRY(el_state_init(m, CTX, take(state_len), state_len, &s));

    /* Both adapters are bound once; switching is then el_set_adapters (a pointer swap). */
    size_t ad_len = el_adapter_size(m);
    el_adapter *a1, *a2;
    TRY(el_adapter_load(m, a1_bytes, a1_len, take(ad_len), ad_len, &a1));
    TRY(el_adapter_load(m, a2_bytes, a2_len, take(ad_len), ad_len, &a2));
    printf("arena used: %zu of %u bytes\n", arena_used, ARENA_BYTES);

    const float one = 1.0f;
    const el_adapter *active[1] = {a1};
    TRY(el_set_adapters(s, active, &one, 1));
    if (answer(m, s, tok, argv[3])) return 1;

    active[0] = a2;
    TRY(el_set_adapters(s, active, &one, 1));
    if (answer(m, s, tok, argv[5])) return 1;
    return 0;
}
