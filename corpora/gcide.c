/* gcide.c — GCIDE as the dict-gcide package ships it for dictd: gcide.index (headword, base64
 * offset, base64 length per line) over gcide.dict.dz (dictzip: gzip with a random-access table;
 * every entry is needed, so zlib inflates it whole), and the renderer that turns an entry's
 * markup into clean "headword: definition" text, optionally keeping only its medical senses. */
#define _GNU_SOURCE
#include "corpus-impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------
 * index and dictionary
 * ------------------------------------------------------------------------------------------ */

static int b64_digit(char ch) {
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
}

/* dictd numbers: big-endian base 64 digits, no padding. Ten digits cover 60 bits. */
static bool b64_number(const char *s, size_t n, uint64_t *out) {
    if (n == 0 || n > 10) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        int d = b64_digit(s[i]);
        if (d < 0) return false;
        v = v * 64 + (uint64_t)d;
    }
    *out = v;
    return true;
}

static int cmp_entry(const void *a, const void *b) {
    const mt_gcide_entry *x = a, *y = b;
    if (x->off != y->off) return x->off < y->off ? -1 : 1;
    return (x->len > y->len) - (x->len < y->len);
}

static mt_status parse_index(mt_gcide *g, const char *path, const char *s, size_t n, mt_error *err) {
    size_t cap = 0, line_no = 0;
    for (size_t ls = 0; ls < n;) {
        const char *nl = memchr(s + ls, '\n', n - ls);
        size_t le = nl ? (size_t)(nl - s) : n;
        line_no++;
        const char *line = s + ls;
        size_t len = le - ls;
        ls = le + 1;
        if (len && line[len - 1] == '\r') len--;
        if (!len) continue;
        const char *t1 = memchr(line, '\t', len);
        const char *t2 = t1 ? memchr(t1 + 1, '\t', len - (size_t)(t1 + 1 - line)) : NULL;
        if (!t2)
            return mt_error_set(err, MT_ERR_FORMAT, "%s:%zu: expected 'headword<TAB>offset<TAB>length'", path, line_no);
        const char *t3 = memchr(t2 + 1, '\t', len - (size_t)(t2 + 1 - line));
        size_t l_len = (size_t)((t3 ? t3 : line + len) - (t2 + 1));
        uint64_t off, elen;
        if (!b64_number(t1 + 1, (size_t)(t2 - t1 - 1), &off) || !b64_number(t2 + 1, l_len, &elen))
            return mt_error_set(err, MT_ERR_FORMAT, "%s:%zu: offset or length is not a dictd base64 number", path,
                                line_no);
        if (off > g->dict.len || elen > g->dict.len - off)
            return mt_error_set(err, MT_ERR_FORMAT,
                                "%s:%zu: entry '%.*s' ends at byte %llu, past the end of the dictionary (%zu bytes)",
                                path, line_no, (int)(t1 - line), line, (unsigned long long)(off + elen), g->dict.len);
        if (g->n == cap) {
            cap = cap ? cap * 2 : 4096;
            mt_gcide_entry *e = realloc(g->ents, cap * sizeof *e);
            if (!e) return mt_error_set(err, MT_ERR_NOMEM, "%s: cannot hold the index", path);
            g->ents = e;
        }
        g->ents[g->n++] = (mt_gcide_entry){off, elen};
    }
    /* Several headwords (inflections, run-on words) point at one entry: keep each range once,
     * in dictionary order, so every entry is rendered once and the output order is fixed. */
    if (g->n) qsort(g->ents, g->n, sizeof *g->ents, cmp_entry);
    size_t k = 0;
    for (size_t i = 0; i < g->n; i++)
        if (!k || cmp_entry(&g->ents[i], &g->ents[k - 1]) != 0) g->ents[k++] = g->ents[i];
    g->n = k;
    return MT_OK;
}

mt_status mt_gcide_open(mt_corpus_ctx *c, mt_gcide *g, mt_error *err) {
    memset(g, 0, sizeof *g);
    char index[PATH_MAX], dz[PATH_MAX], plain[PATH_MAX];
    if (!mt_corpus_path(c, "usr/share/dictd/gcide.index", index, sizeof index) ||
        !mt_corpus_path(c, "usr/share/dictd/gcide.dict.dz", dz, sizeof dz) ||
        !mt_corpus_path(c, "usr/share/dictd/gcide.dict", plain, sizeof plain))
        return mt_error_set(err, MT_ERR_INVALID, "%s: root path too long", c->root);
    const char *dict = mt_path_exists(dz) ? dz : plain;
    if (!mt_path_exists(index) || !mt_path_exists(dict))
        return mt_error_set(err, MT_ERR_NOT_FOUND,
                            "%s: not found (GCIDE comes with the dict-gcide package: apt install dict-gcide)",
                            mt_path_exists(index) ? dz : index);
    mt_corpus_buf idx = {0};
    mt_status st = MT_OK;
    if (!mt_corpus_load_raw(c, dict, &g->dict))
        st = mt_error_set(err, g->dict.oom ? MT_ERR_NOMEM : MT_ERR_IO, "%s: cannot read it as gzip or text", dict);
    else if (!mt_corpus_load_raw(c, index, &idx))
        st = mt_error_set(err, idx.oom ? MT_ERR_NOMEM : MT_ERR_IO, "%s: cannot read it", index);
    else
        st = parse_index(g, index, idx.p, idx.len, err);
    mt_corpus_buf_free(&idx);
    if (st != MT_OK) mt_gcide_close(g);
    return st;
}

void mt_gcide_close(mt_gcide *g) {
    mt_corpus_buf_free(&g->dict);
    free(g->ents);
    memset(g, 0, sizeof *g);
}

/* ------------------------------------------------------------------------------------------
 * markup
 * ------------------------------------------------------------------------------------------ */

/* GCIDE's dictd text spells characters it cannot write in ASCII as bracketed codes. The
 * pronunciation-only marks (breve, macron on "oo", dots, "asl") keep just the letter; the
 * rest become the Unicode character. Any other bracketed span is an etymology, a source
 * ("[1913 Webster]") or a usage label ("[Obs.]") and is dropped. */
static const struct {
    const char *code, *text;
} ACCENTS[] = {
    {"'a", "á"}, {"'e", "é"}, {"'i", "í"}, {"'o", "ó"}, {"'u", "ú"}, {"'y", "ý"}, {"'A", "Á"}, {"'E", "É"},
    {"'I", "Í"}, {"'O", "Ó"}, {"'U", "Ú"}, {"`a", "à"}, {"`e", "è"}, {"`i", "ì"}, {"`o", "ò"}, {"`u", "ù"},
    {"`A", "À"}, {"`E", "È"}, {"\"a", "ä"}, {"\"e", "ë"}, {"\"i", "ï"}, {"\"o", "ö"}, {"\"u", "ü"},
    {"\"y", "ÿ"}, {"\"A", "Ä"}, {"\"E", "Ë"}, {"\"I", "Ï"}, {"\"O", "Ö"}, {"\"U", "Ü"}, {"^a", "â"},
    {"^e", "ê"}, {"^i", "î"}, {"^o", "ô"}, {"^u", "û"}, {"^A", "Â"}, {"^E", "Ê"}, {"^O", "Ô"}, {"~a", "ã"},
    {"~n", "ñ"}, {"~o", "õ"}, {"~N", "Ñ"}, {"~e", "e"}, {"~l", "l"}, {",c", "ç"}, {",C", "Ç"}, {"=a", "ā"},
    {"=e", "ē"}, {"=i", "ī"}, {"=o", "ō"}, {"=u", "ū"}, {"=y", "ȳ"}, {"=A", "Ā"}, {"=E", "Ē"}, {"=O", "Ō"},
    {"=ae", "ǣ"}, {"=oo", "oo"}, {"imac", "ī"}, {"a^", "a"}, {"e^", "e"}, {"i^", "i"}, {"o^", "o"},
    {"u^", "u"}, {"y^", "y"}, {"oo^", "oo"}, {".a", "a"}, {".e", "e"}, {".i", "i"}, {".o", "o"}, {".u", "u"},
    {".c", "c"}, {".h", "h"}, {".m", "m"}, {".n", "n"}, {".r", "r"}, {".t", "t"}, {".z", "z"}, {"-a", "a"},
    {"-e", "e"}, {"-i", "i"}, {"-o", "o"}, {"-u", "u"}, {"*a", "a"}, {"*u", "u"}, {"asl", "a"}, {"aum", "ä"},
    {"add", "a"}, {"udd", "u"}, {"ng", "ng"}, {"th", "th"}, {"dsdot", "d"}, {"lsdot", "l"}, {"tsdo", "t"},
    {"zdot", "z"}, {"mdot", "m"}, {"ae", "æ"}, {"AE", "Æ"}, {"oe", "œ"}, {"OE", "Œ"}, {"eth", "ð"},
    {"thorn", "þ"}, {"yogh", "ȝ"}, {"deg", "°"}, {"sect", "§"}, {"root", "√"}, {"para", "¶"}, {"dag", "†"},
    {"times", "×"}, {"divby", "÷"}, {"div", "÷"}, {"sharp", "♯"}, {"flat", "♭"}, {"nbsp", " "},
    {"ldqo", "“"}, {"rdqo", "”"}, {"rsquo", "’"}, {"rarr", "→"}, {"alpha", "α"}, {"beta", "β"},
    {"gamma", "γ"}, {"delta", "δ"}, {"eta", "η"}, {"zeta", "ζ"}, {"theta", "θ"}, {"iota", "ι"},
    {"kappa", "κ"}, {"mu", "μ"}, {"nu", "ν"}, {"xi", "ξ"}, {"pi", "π"}, {"rho", "ρ"}, {"sigma", "σ"},
    {"tau", "τ"}, {"phi", "φ"}, {"chi", "χ"}, {"Gamma", "Γ"}, {"Delta", "Δ"}, {"Theta", "Θ"}, {"Pi", "Π"},
    {"Sigma", "Σ"}, {"Omega", "Ω"},
};

/* Length of the accent code at s ("[`e]" → 4) with its text in *text, or 0. */
static size_t accent_code(const char *s, size_t n, const char **text) {
    size_t j = 1;
    while (j < n && j <= 6 && s[j] != ']' && s[j] != '[' && s[j] != ' ' && s[j] != '\n') j++;
    if (j >= n || s[j] != ']' || j == 1) return 0;
    for (size_t k = 0; k < sizeof ACCENTS / sizeof ACCENTS[0]; k++)
        if (strlen(ACCENTS[k].code) == j - 1 && !memcmp(ACCENTS[k].code, s + 1, j - 1)) {
            *text = ACCENTS[k].text;
            return j + 1;
        }
    return 0;
}

/* Index of the bracket closing the one at s[i] (nesting counted), or n. */
static size_t matching(const char *s, size_t n, size_t i, char open, char close) {
    int depth = 0;
    for (size_t j = i; j < n; j++) {
        if (s[j] == open)
            depth++;
        else if (s[j] == close && --depth == 0)
            return j;
    }
    return n;
}

static bool is_upper(char ch) { return ch >= 'A' && ch <= 'Z'; }
static bool is_lower(char ch) { return ch >= 'a' && ch <= 'z'; }
static bool is_alpha(char ch) { return is_upper(ch) || is_lower(ch); }
static bool is_digit(char ch) { return ch >= '0' && ch <= '9'; }

static const char *const TAG_WORDS[MT_CORPUS_TAG_COUNT] = {"Med", "Anat", "Pathol", "Physiol", "Surg"};

/* A field label is a parenthesised list of capitalised abbreviations: "(Med.)", "(Anat. &
 * Zool.)", "(Physiol. Chem.)", "(Zo["o]l.)". Returns whether `s` is one and, in *tags, which
 * medical fields it names (a tag name without its period counts too: "(Med)" occurs). */
static bool field_label(const char *s, size_t n, unsigned *tags) {
    *tags = 0;
    if (n == 0 || n > 48) return false;
    size_t words = 0;
    for (size_t i = 0; i < n;) {
        while (i < n && s[i] == ' ') i++;
        if (i >= n) break;
        size_t j = i;
        while (j < n && s[j] != ' ') j++;
        size_t wl = j - i;
        if (wl && s[i + wl - 1] == ',') wl--;
        const char *w = s + i;
        i = j;
        if ((wl == 1 && w[0] == '&') || (wl == 3 && !memcmp(w, "and", 3))) continue;
        if (!wl || !is_upper(w[0])) return false;
        bool dotted = w[wl - 1] == '.';
        size_t core = dotted ? wl - 1 : wl;
        for (size_t k = 0; k < core; k++)
            if (!is_alpha(w[k]) && w[k] != '[' && w[k] != ']' && w[k] != '"' && w[k] != '\'') return false;
        bool tag = false;
        for (int t = 0; t < MT_CORPUS_TAG_COUNT; t++)
            if (strlen(TAG_WORDS[t]) == core && !memcmp(TAG_WORDS[t], w, core)) {
                *tags |= 1u << t;
                tag = true;
            }
        if (!dotted && !tag) return false;
        words++;
    }
    return words > 0;
}

unsigned mt_gcide_entry_tags(const char *e, size_t n) {
    unsigned all = 0;
    for (size_t i = 0; i < n; i++) {
        if (e[i] != '(') continue;
        size_t j = matching(e, n, i, '(', ')');
        unsigned t;
        if (j < n && field_label(e + i + 1, j - i - 1, &t)) all |= t;
    }
    return all;
}

static bool sense_marker(const char *s, size_t n) {
    if (n == 1) return is_lower(s[0]) || is_digit(s[0]);
    return n == 2 && is_digit(s[0]) && is_digit(s[1]);
}

/* A respelled pronunciation: "([.a]*b[=a]"zh[i^]*[.a])", "(-d[=u]st")". */
static bool phonetic(const char *s, size_t n) {
    if (n && s[0] == '-') return true;
    return memchr(s, '*', n) || memchr(s, '`', n);
}

/* Whitespace runs become one space; no space before , ; : . ! ? ) or after (. */
static void tidy(const char *s, size_t n, mt_corpus_buf *out) {
    size_t start = out->len;
    bool pending = false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == ' ' || ch == '\t' || ch == '\n') {
            pending = out->len > start;
            continue;
        }
        if (pending && !strchr(",;:.!?)", ch) && out->p[out->len - 1] != '(') mt_corpus_buf_putc(out, ' ');
        pending = false;
        mt_corpus_buf_putc(out, ch);
    }
}

/* Strips the markup from one piece of entry text and tidies it into `out`. */
static void clean(const char *s, size_t n, mt_corpus_buf *out) {
    mt_corpus_buf raw = {0};
    bool in_brace = false;
    for (size_t i = 0; i < n;) {
        char ch = s[i];
        const char *acc;
        size_t k;
        if (ch == '\\') { /* pronunciation with syllable and stress marks: \Ab*do"men\ */
            const char *end = memchr(s + i + 1, '\\', n - i - 1);
            i = end ? (size_t)(end - s) + 1 : n;
        } else if (ch == '[' && (k = accent_code(s + i, n - i, &acc))) {
            mt_corpus_buf_puts(&raw, acc);
            i += k;
        } else if (ch == '[') {
            size_t j = matching(s, n, i, '[', ']');
            mt_corpus_buf_putc(&raw, ' ');
            i = j < n ? j + 1 : n;
        } else if (ch == '(') {
            size_t j = matching(s, n, i, '(', ')');
            unsigned t;
            if (j < n && sense_marker(s + i + 1, j - i - 1)) {
                mt_corpus_buf_put(&raw, s + i, j - i + 1);
                i = j + 1;
            } else if (j < n && (field_label(s + i + 1, j - i - 1, &t) || phonetic(s + i + 1, j - i - 1))) {
                mt_corpus_buf_putc(&raw, ' ');
                i = j + 1;
            } else {
                mt_corpus_buf_putc(&raw, '(');
                i++;
            }
        } else if (ch == '{' || ch == '}') { /* cross-reference or run-on word: keep the word */
            in_brace = ch == '{';
            i++;
        } else if (in_brace && (ch == '*' || ((ch == '"' || ch == '`') && raw.len && is_alpha(raw.p[raw.len - 1])))) {
            i++; /* syllable and stress marks inside a run-on headword: {A*ba"sic} */
        } else if (ch == 'A' && i + 1 < n && s[i + 1] == 'S' && (i == 0 || s[i - 1] == ' ') &&
                   (i + 2 == n || s[i + 2] == '\n')) {
            i += 2; /* "AS" closing a line marks an editor's addition, not a word */
        } else if (ch == '-' && i + 2 < n && s[i + 1] == '-' && is_upper(s[i + 2])) {
            const char *end = memchr(s + i, '\n', n - i); /* a quotation's author: --Milton. */
            i = end ? (size_t)(end - s) : n;
        } else {
            mt_corpus_buf_putc(&raw, ch);
            i++;
        }
    }
    if (raw.p) tidy(raw.p, raw.len, out);
    if (raw.oom) out->oom = true;
    mt_corpus_buf_free(&raw);
}

/* ------------------------------------------------------------------------------------------
 * entry structure
 * ------------------------------------------------------------------------------------------ */

typedef struct span {
    const char *s;
    size_t n;
} span;

static size_t indent_of(span l) {
    size_t i = 0;
    while (i < l.n && (l.s[i] == ' ' || l.s[i] == '\t')) i++;
    return i;
}

static span trimmed(span l) {
    size_t i = indent_of(l);
    return (span){l.s + i, l.n - i};
}

/* "12. " at the start of a line: a numbered sense; returns the length of the number and dot. */
static size_t sense_number(span t) {
    size_t i = 0;
    while (i < t.n && is_digit(t.s[i])) i++;
    if (i == 0 || i > 2 || i + 1 >= t.n || t.s[i] != '.' || t.s[i + 1] != ' ') return 0;
    return i + 1;
}

/* A sense's label as rendered: its number, or a lettered sub-sense "(c) " that became a sense
 * of its own (not "(a) " when "(b) " follows in the same sense); returns its length. */
static size_t sense_label(span t) {
    size_t k = sense_number(t);
    if (k) return k;
    if (!(t.n > 4 && t.s[0] == '(' && is_lower(t.s[1]) && t.s[2] == ')' && t.s[3] == ' ')) return 0;
    char next[4] = {'(', (char)(t.s[1] + 1), ')', ' '};
    return memmem(t.s + 4, t.n - 4, next, 4) ? 0 : 3;
}

/* A head continuation line starts with markup or a part of speech ("n.", "v. t."). */
static bool head_continues(span t) {
    if (!t.n) return false;
    if (t.s[0] == '[' || t.s[0] == '{' || t.s[0] == '\\') return true;
    if (t.s[0] == '(') return !(t.n >= 3 && is_lower(t.s[1]) && t.s[2] == ')');
    size_t i = 0;
    while (i < t.n && i < 6 && is_lower(t.s[i])) i++;
    return i > 0 && i < 6 && i < t.n && t.s[i] == '.' && (i + 1 == t.n || strchr(" ,;", t.s[i + 1]));
}

/* Open brackets, braces and parentheses at the end of a head line: the head goes on while any
 * is open. Parentheses inside an etymology are not counted: "[Gr. ? piece (dim. of ? a part]"
 * leaves one open for ever. */
typedef struct nesting {
    int square, other;
    bool in_pron;
} nesting;

static void nest(span l, nesting *d) {
    for (size_t i = 0; i < l.n; i++) {
        char ch = l.s[i];
        if (ch == '\\')
            d->in_pron = !d->in_pron;
        else if (ch == '[')
            d->square++;
        else if (ch == ']')
            d->square--;
        else if (d->square <= 0 && (ch == '(' || ch == '{'))
            d->other++;
        else if (d->square <= 0 && (ch == ')' || ch == '}'))
            d->other--;
    }
}

static bool blank(span l) { return indent_of(l) == l.n; }

/* Text that lost its source line or a quotation's author still ends as a sentence. */
static void ensure_full_stop(mt_corpus_buf *b, size_t from) {
    if (b->len > from && (is_alpha(b->p[b->len - 1]) || is_digit(b->p[b->len - 1]))) mt_corpus_buf_putc(b, '.');
}

typedef struct sense {
    size_t start, len; /* cleaned text in the senses buffer */
    size_t number;     /* length of "N." kept at the start of the text, 0 when unnumbered */
} sense;

/* Renders one segment (a sense, or a run-on/sub-entry "{Name} (Field.), definition"). */
static void render_segment(span seg, mt_corpus_buf *senses, sense **sv, size_t *ns, size_t *cap,
                           mt_corpus_buf *subs) {
    span t = trimmed(seg);
    if (t.n && t.s[0] == '{') {
        size_t j = matching(t.s, t.n, 0, '{', '}');
        if (j >= t.n) return;
        mt_corpus_buf name = {0}, def = {0};
        clean(t.s, j + 1, &name);
        clean(t.s + j + 1, t.n - j - 1, &def);
        size_t k = 0;
        while (k < def.len && strchr(",;:.- ", def.p[k])) k++;
        if (name.len && def.len > k) {
            if (subs->len) mt_corpus_buf_putc(subs, '\n');
            size_t from = subs->len;
            mt_corpus_buf_put(subs, name.p, name.len);
            mt_corpus_buf_put(subs, ": ", 2);
            mt_corpus_buf_put(subs, def.p + k, def.len - k);
            ensure_full_stop(subs, from);
        }
        if (name.oom || def.oom) subs->oom = true;
        mt_corpus_buf_free(&name);
        mt_corpus_buf_free(&def);
        return;
    }
    size_t num = sense_label(t);
    size_t start = senses->len;
    if (num) {
        mt_corpus_buf_put(senses, t.s, num);
        mt_corpus_buf_putc(senses, ' ');
    }
    size_t body = senses->len;
    clean(t.s + num, t.n - num, senses);
    if (senses->len == body) { /* nothing but sources and labels */
        senses->len = start;
        if (senses->p) senses->p[start] = '\0';
        return;
    }
    if (*ns == *cap) {
        *cap = *cap ? *cap * 2 : 16;
        *sv = mt_xrealloc(*sv, *cap * sizeof **sv);
    }
    (*sv)[(*ns)++] = (sense){start, senses->len - start, num ? num + 1 : 0};
}

void mt_gcide_render(const char *e, size_t n, bool medical_only, mt_corpus_buf *out, unsigned *tags) {
    out->len = 0;
    if (out->p) out->p[0] = '\0';
    *tags = 0;
    mt_corpus_buf txt = {0};
    if (!mt_corpus_decode_text(e, n, &txt, NULL) || !txt.len) {
        mt_corpus_buf_free(&txt);
        return;
    }
    size_t nl = 0, capl = 64;
    span *lines = mt_xmalloc(capl * sizeof *lines);
    for (size_t ls = 0; ls <= txt.len;) {
        const char *p = memchr(txt.p + ls, '\n', txt.len - ls);
        size_t le = p ? (size_t)(p - txt.p) : txt.len;
        if (nl == capl) lines = mt_xrealloc(lines, (capl *= 2) * sizeof *lines);
        lines[nl++] = (span){txt.p + ls, le - ls};
        ls = le + 1;
    }
    while (nl && blank(lines[nl - 1])) nl--;

    /* The dictd conversion sometimes runs the next headword onto an entry's last source line:
     * "[1913 Webster] AEsthesiometer". */
    if (nl > 1) {
        span t = trimmed(lines[nl - 1]);
        size_t j = t.n && t.s[0] == '[' ? matching(t.s, t.n, 0, '[', ']') : t.n;
        if (j < t.n) lines[nl - 1].n = (size_t)(t.s - lines[nl - 1].s) + j + 1;
    }

    /* headword: the first line up to the pronunciation */
    span head0 = nl ? lines[0] : (span){txt.p, 0};
    const char *bs = memchr(head0.s, '\\', head0.n);
    size_t hw = bs ? (size_t)(bs - head0.s) : head0.n;
    while (hw && strchr(" ,", head0.s[hw - 1])) hw--;
    bool valid = hw > 0 && hw <= 80 && !strchr(" {}([-*", head0.s[0]) &&
                 !(hw >= 3 && !memcmp(head0.s, "00-", 3)) && !memchr(head0.s, '{', hw) && !memmem(head0.s, hw, "--", 2);

    /* head: the first line and its continuations (pronunciations, part of speech, plural forms,
     * etymology, field label), up to where the definition starts */
    size_t h = 0;
    nesting depth = {0, 0, false};
    if (nl) nest(lines[0], &depth);
    while (valid && h + 1 < nl && !blank(lines[h + 1])) {
        span cur = lines[h];
        size_t last = cur.n;
        while (last && (cur.s[last - 1] == ' ')) last--;
        bool cont = depth.square > 0 || depth.other > 0 || depth.in_pron || (last && strchr(",;&", cur.s[last - 1])) ||
                    head_continues(trimmed(lines[h + 1]));
        if (!cont) break;
        h++;
        nest(lines[h], &depth);
    }

    mt_corpus_buf headword = {0}, senses = {0}, subs = {0};
    sense *sv = NULL;
    size_t ns = 0, cap = 0;
    if (valid) {
        clean(head0.s, hw, &headword);
        const char *hs = lines[0].s;
        unsigned head_tags = mt_gcide_entry_tags(hs, (size_t)(lines[h].s + lines[h].n - hs));
        size_t i = h + 1;
        while (i < nl) {
            if (blank(lines[i])) {
                i++;
                continue;
            }
            /* quotations are set deeper than senses (12 columns): illustration, not definition;
             * one ends at its source line or where a shallower line takes the sense up again */
            size_t first = i++;
            bool quote = indent_of(lines[first]) >= 8;
            while (i < nl && !blank(lines[i])) {
                span t = trimmed(lines[i]);
                size_t ind = indent_of(lines[i]);
                if (ind <= 4 && sense_number(t)) break;
                if (quote && ind < 8 && t.s[0] != '[') break;
                i++;
            }
            if (quote) continue;
            span seg = {lines[first].s, (size_t)(lines[i - 1].s + lines[i - 1].n - lines[first].s)};
            unsigned seg_tags = mt_gcide_entry_tags(seg.s, seg.n);
            if (medical_only && !head_tags && !seg_tags) continue;
            size_t before = ns + subs.len;
            render_segment(seg, &senses, &sv, &ns, &cap, &subs);
            if (ns + subs.len != before) *tags |= head_tags | seg_tags;
        }
    }
    if (headword.len && (ns || subs.len)) {
        if (ns) {
            mt_corpus_buf_put(out, headword.p, headword.len);
            mt_corpus_buf_put(out, ": ", 2);
            for (size_t k = 0; k < ns; k++) {
                size_t skip = ns == 1 ? sv[k].number : 0; /* a lone sense needs no number */
                if (k) mt_corpus_buf_putc(out, ' ');
                size_t from = out->len;
                mt_corpus_buf_put(out, senses.p + sv[k].start + skip, sv[k].len - skip);
                ensure_full_stop(out, from);
            }
        }
        if (subs.len) {
            if (out->len) mt_corpus_buf_putc(out, '\n');
            mt_corpus_buf_put(out, subs.p, subs.len);
        }
    } else
        *tags = 0;
    if (headword.oom || senses.oom || subs.oom || txt.oom) out->oom = true;
    free(sv);
    free(lines);
    mt_corpus_buf_free(&headword);
    mt_corpus_buf_free(&senses);
    mt_corpus_buf_free(&subs);
    mt_corpus_buf_free(&txt);
}
