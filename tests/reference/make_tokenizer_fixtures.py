#!/usr/bin/env python3
"""make_tokenizer_fixtures.py — builds the tokenizer parity fixtures under
tests/fixtures/tokenizers/ with the Hugging Face `tokenizers` library (and `transformers` for
the folder-loading cases): one small tokenizer per model style with the real normalizer,
pre-tokenizer, post-processor and decoder configuration of GPT-2, Llama-3, Qwen2, DeepSeek-V3
and Mixtral (plus a Metaspace variant and a few exotic pipelines), and a cases.json of ids and
decodes for a few hundred strings. The vocabularies are trained here on Debian's license texts
because the real files (1-9 MB each) are too large to commit.

It also checks the tokenizers `moetune tokenizer train` wrote (train_<style>/): HF loads them,
their cases are dumped, and HF's own BpeTrainer on the same corpus must give the same file.

Usage: /work/venv/bin/python tests/reference/make_tokenizer_fixtures.py [--moetune BUILD/moetune]
"""
import argparse
import glob
import json
import os
import random
import subprocess
import sys
import tempfile

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "tokenizers")

# The published patterns (tokenizer.json of Llama-3, Qwen2, DeepSeek-V3).
LLAMA3_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
DS3_RES = [
    r"\p{N}{1,3}",
    "[一-龥\u3040-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]

QWEN2_DECODER = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}

MULTILINGUAL = """\
Das Urheberrecht schützt Werke der Literatur, Wissenschaft und Kunst. Übersetzung ist erlaubt.
Le droit d'auteur protège les œuvres de l'esprit ; la licence est accordée « telle quelle ».
El software se distribuye «tal cual», sin garantía de ningún tipo. Año, niño, acción.
本软件按“原样”提供，不提供任何明示或暗示的担保。版权所有，保留所有权利。
本ソフトウェアは「現状のまま」提供され、いかなる保証もありません。著作権表示を含めること。
이 소프트웨어는 "있는 그대로" 제공되며 어떠한 보증도 하지 않습니다.
Данное программное обеспечение предоставляется «как есть», без каких-либо гарантий.
Το λογισμικό παρέχεται «ως έχει», χωρίς καμία εγγύηση.
يتم توفير هذا البرنامج "كما هو" دون أي ضمان من أي نوع.
Numbers: 0 1 12 123 1234 12345 2024-01-31 3.14159 1,000,000 ١٢٣ ½ ² Ⅻ
Emoji 😀 🎉 👍🏽 ✓ → ∑ ∞ ≈ €50 £30 ¥100
"""


def corpus_lines(limit_bytes):
    """Lines (with their endings) of the license texts, as the Rust trainer reads files."""
    files = sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(glob.glob("/usr/share/doc/*/copyright"))
    lines, total = [], 0
    for _ in range(40):
        lines.extend(MULTILINGUAL.splitlines(keepends=True))
    for path in files:
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        lines.extend(split_lines(text))
        total += len(text)
        if total >= limit_bytes:
            break
    return lines


def split_lines(text):
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


# ---------------------------------------------------------------------------------------------
# the fixture tokenizers


def bytelevel_tokenizer(pre, decoder, normalizer=None, ignore_merges=False, vocab_size=3000, lines=None):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    tok.decoder = decoder
    return tok


def set_json(tok, fn):
    d = json.loads(tok.to_str())
    fn(d)
    return Tokenizer.from_str(json.dumps(d))


def build_gpt2(lines):
    tok = bytelevel_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
                              decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True), lines=lines)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=True)])
    config = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    return tok, config


def build_llama3(lines):
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok = bytelevel_tokenizer(pre, decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True),
                              ignore_merges=True, lines=lines)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
              "chat_template": "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                               "{{ m['content'] }}<|eot_id|>{% endfor %}",
              "tokenizer_class": "PreTrainedTokenizerFast"}
    return tok, config


def build_qwen2(lines):
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok = bytelevel_tokenizer(pre, decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
                              normalizer=normalizers.NFC(), lines=lines)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    # The Python ByteLevel decoder constructor drops its arguments; Qwen2's file has them false.
    tok = set_json(tok, lambda d: d.update(decoder=QWEN2_DECODER))
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False)
                            for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]])
    # Qwen2.5's tool-call markers are added tokens that are not special.
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in ["<tool_call>", "</tool_call>"]])
    config = {"bos_token": None, "eos_token": "<|im_end|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    return tok, config


def build_deepseek_v3(lines):
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in DS3_RES] +
                                  [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre
    # DeepSeek-V3 keeps its three first special tokens at ids 0-2 of the model vocabulary.
    first = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"]
    trainer = trainers.BpeTrainer(vocab_size=3000, show_progress=False, special_tokens=first,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in
                            ["<｜place▁holder▁no▁0｜>", "<｜place▁holder▁no▁1｜>", "<｜fim▁hole｜>"]])
    tok.add_tokens([AddedToken(s, special=False, normalized=True) for s in ["<｜User｜>", "<｜Assistant｜>"]] +
                   [AddedToken(s, special=False, normalized=False) for s in ["<think>", "</think>"]])
    tok.post_processor = processors.TemplateProcessing(
        single="<｜begin▁of▁sentence｜> $A", pair="<｜begin▁of▁sentence｜> $A <｜begin▁of▁sentence｜>:1 $B:1",
        special_tokens=[("<｜begin▁of▁sentence｜>", 0)])
    config = {"bos_token": {"__type": "AddedToken", "content": "<｜begin▁of▁sentence｜>", "lstrip": False, "normalized": True,
                            "rstrip": False, "single_word": False},
              "eos_token": {"__type": "AddedToken", "content": "<｜end▁of▁sentence｜>", "lstrip": False, "normalized": True,
                            "rstrip": False, "single_word": False},
              "add_bos_token": True, "add_eos_token": False,
              "chat_template": [{"name": "tool_use", "template": "{{ tools }}"},
                                {"name": "default", "template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}],
              "tokenizer_class": "PreTrainedTokenizerFast"}
    return tok, config


def sp_vocab(lines):
    """A SentencePiece-style BPE vocabulary: <unk> <s> </s>, the 256 byte tokens, then merges
    learnt over ▁-prefixed words with a limited alphabet so that rare characters fall back."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    specials = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=2500, show_progress=False, special_tokens=specials, limit_alphabet=120)
    tok.train_from_iterator(lines, trainer)
    d = json.loads(tok.to_str())
    return d["model"]["vocab"], d["model"]["merges"]


def sp_tokenizer(vocab, merges, metaspace):
    d = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])],
        "normalizer": None if metaspace else {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
        if metaspace else None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False} if metaspace else
        {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    return Tokenizer.from_str(json.dumps(d))


def build_mixtral(sp):
    tok = sp_tokenizer(*sp, metaspace=False)
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
              "add_eos_token": True, "tokenizer_class": "PreTrainedTokenizerFast"}
    return tok, config


def build_sp_metaspace(sp):
    return sp_tokenizer(*sp, metaspace=True), None


def build_custom_split(gpt2):
    """Components no real model above combines: every Split behavior, invert, Digits, a regex
    Replace, NFKC, Strip, and added tokens with lstrip/rstrip/single_word/normalized."""
    def edit(d):
        d["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "NFKC"}, {"type": "Strip", "strip_left": False, "strip_right": True},
            {"type": "Replace", "pattern": {"Regex": "\\s{3,}"}, "content": "\t"}]}
        d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": "--"}, "behavior": "Removed", "invert": False},
            {"type": "Split", "pattern": {"Regex": "[,;]"}, "behavior": "MergedWithPrevious", "invert": False},
            {"type": "Split", "pattern": {"Regex": "[(\\[]"}, "behavior": "MergedWithNext", "invert": False},
            {"type": "Split", "pattern": {"Regex": "[.!?]"}, "behavior": "Contiguous", "invert": False},
            {"type": "Split", "pattern": {"Regex": "[^:]+"}, "behavior": "Isolated", "invert": True},
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}
        d["post_processor"] = {"type": "RobertaProcessing", "sep": ["<|endoftext|>", d["added_tokens"][0]["id"]],
                               "cls": ["<|endoftext|>", d["added_tokens"][0]["id"]],
                               "trim_offsets": True, "add_prefix_space": True}
        n = len(d["model"]["vocab"]) + len(d["added_tokens"])
        d["added_tokens"] += [
            {"id": n, "content": "[MASK]", "single_word": False, "lstrip": True, "rstrip": True, "normalized": False, "special": True},
            {"id": n + 1, "content": "word", "single_word": True, "lstrip": False, "rstrip": False, "normalized": True, "special": False},
            {"id": n + 2, "content": "ﬁx", "single_word": False, "lstrip": False, "rstrip": False, "normalized": True, "special": False},
            {"id": n + 3, "content": "<sep>", "single_word": False, "lstrip": False, "rstrip": True, "normalized": False, "special": True},
            {"id": n + 4, "content": "<sepx>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": False},
        ]
    return set_json(gpt2, edit), None


def build_custom_ws(gpt2):
    """Whitespace and WhitespaceSplit pre-tokenizers, NFD/NFKD, and decoding without a decoder."""
    def edit(d):
        d["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKD"}, {"type": "NFD"}, {"type": "NFC"}]}
        d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"}, {"type": "Whitespace"},
            {"type": "Digits", "individual_digits": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
        d["decoder"] = None
        d["post_processor"] = None
    return set_json(gpt2, edit), None


def build_custom_meta(sp):
    """Metaspace splitting with prepend_scheme always, and Strip/Replace(Regex) decoders."""
    tok = sp_tokenizer(*sp, metaspace=True)

    def edit(d):
        d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
        d["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"Regex": "▁+"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Strip", "content": " ", "start": 2, "stop": 0},
            {"type": "Fuse"}]}
        d["post_processor"] = {"type": "TemplateProcessing",
                               "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                          {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                               "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                               "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                                                  "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}}
    return set_json(tok, edit), None


def build_custom_affix(lines):
    """continuing_subword_prefix, end_of_word_suffix, an unknown token without byte fallback
    (fuse_unk off), the Whitespace pre-tokenizer and the BPEDecoder."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##", end_of_word_suffix="</w>",
                               fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=1500, show_progress=False, special_tokens=["[UNK]"], limit_alphabet=70,
                                  continuing_subword_prefix="##", end_of_word_suffix="</w>")
    tok.train_from_iterator(lines, trainer)
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    return tok, None


# ---------------------------------------------------------------------------------------------
# the strings


def test_strings(specials, corpus, seed):
    rng = random.Random(seed)
    base = [
        "", " ", "  ", "\t", "\n", "\r\n", "\n\n\n", " \n ", "a", "Hello world", " Hello world", "Hello world ",
        "  leading and trailing  ", "Hello, World! How are you?",
        "It's a test. I'LL go; they've done it, we'd see, you're right, I'm here, don't.",
        "'s 'S 'll 'LL 'Re 've 'M 'D 't", "x's y'S z'ſ", "numbers 1 12 123 1234 12345 123456 1234567",
        "3.14159 and 2,718,281 and 1e-10", "a1b22c333d4444e55555", "0000000", "digits٣٤٥ and ½ ² Ⅻ ①",
        "中文测试：你好，世界！", "日本語のテキスト、カタカナ、ひらがな。", "한국어 텍스트입니다", "混合mixed文字123テスト",
        "Ünïcödé àccénts naïve café résumé", "e\u0301 combining acute (NFC makes é)", "A\u030a vs Å vs \u212b",
        "\u1100\u1161\u11a8 decomposed hangul", "ﬁ ligature ﬀ ﬃ and ™ ℃", "مرحبا بالعالم", "Привет, мир!",
        "Γειά σου Κόσμε", "שלום עולם", "नमस्ते दुनिया", "ภาษาไทย", "emoji 😀🎉👍🏽 family 👨\u200d👩\u200d👧",
        "tabs\tand\ttabs", "line1\nline2\n\nline4", "windows\r\nline\r\n", "mac\rline\r", "trailing newline\n",
        "multiple   spaces    here", "   ", "\t\t\n\t", " \u00a0nbsp\u00a0 ", "ideographic\u3000space",
        "line\u2028separator\u2029para", "next\x85line", "mongolian\u180evowel", "zero\u200bwidth\u200cjoin\u200d",
        "control\x01\x02\x1f chars\x7f", "supercalifragilisticexpialidocious", "x" * 300, "ab" * 150,
        "https://example.com/path?query=1&b=2#frag", "user@example.org", "def f(x):\n    return x**2  # comment\n",
        "if (a && b) { c[i] = d->e; }", "<html><body class=\"x\">text</body></html>", "--dash--double--", "a--b",
        "(parens) [brackets] {braces}", "Wait... what?! Really?!?", "key: value: more", "semi;colon,comma",
        "▁already▁has▁metaspace", "<0x41> looks like a byte token", "  \n  \n", "end.", "`~!@#$%^&*()_+-=",
        "ÀÁÂÃÄÅ àáâãäå ÇçÑñ", "Iñtërnâtiônàlizætiøn☃💩", "\U0001f600" * 5, "word words sword word.", "fix ﬁx ﬁxes",
        "[MASK] a [MASK]b c [MASK]", "<sep>  after", "<sepx> <sep>x", "a  [MASK]  b",
    ]
    for s in specials:
        base += [s, "before" + s + "after", " " + s + " ", s + s, "x " + s + "\nnext", s[:-1], s + " tail"]
    pool = ["the", " license", "GPL", "Copyright", " 2024", "©", "é", "ü", "中", "文", "日本", "😀", " ", "  ", "\n",
            "\t", "'s", "'LL", ",", ".", "!", "?", "-", "—", "123", "4567", "٣", "\u0301", "ﬁ", "Ω", "ß", "İ", "ǅ",
            "\u00a0", "\r\n", "über", "naïve", "ру", "σ", "ا", "한", "x", "Y", "z9"] + list(specials)
    for _ in range(140):
        base.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 10))))
    blocks = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x600, 0x6ff), (0x3040, 0x30ff),
              (0x4e00, 0x4fff), (0xac00, 0xad00), (0x1f600, 0x1f64f), (0x2000, 0x206f)]
    for _ in range(40):
        chars = []
        for _ in range(rng.randint(1, 20)):
            lo, hi = rng.choice(blocks)
            chars.append(chr(rng.randint(lo, hi)))
        base.append("".join(chars))
    lines = [l for l in corpus if l.strip()]
    for _ in range(40):
        k = rng.randint(1, 4)
        i = rng.randrange(len(lines) - k)
        base.append("".join(lines[i:i + k]))
    return base


def dump_cases(tok, name, strings, seed, folder_cases=None):
    rng = random.Random(seed)
    enc = []
    for s in strings:
        ids = tok.encode(s, add_special_tokens=False).ids
        ids_sp = tok.encode(s, add_special_tokens=True).ids
        enc.append({"text": s, "ids": ids, "ids_special": ids_sp,
                    "decoded": tok.decode(ids_sp, skip_special_tokens=False),
                    "decoded_skip": tok.decode(ids_sp, skip_special_tokens=True)})
    dec = []
    v = tok.get_vocab_size(with_added_tokens=True)
    for _ in range(60):
        ids = [rng.randrange(v + 5) for _ in range(rng.randint(0, 12))]
        # as UTF-8 hex: random ids can decode to U+0000, which a C string cannot carry
        dec.append({"ids": ids, "hex": tok.decode(ids, skip_special_tokens=False).encode().hex(),
                    "hex_skip": tok.decode(ids, skip_special_tokens=True).encode().hex()})
    out = {"tokenizer": name, "vocab_size": v, "encode": enc, "decode": dec}
    if folder_cases:
        out["folder"] = folder_cases
    return out


def folder_cases(path, strings):
    """What transformers makes of the folder (tokenizer_config.json honoured)."""
    from transformers import AutoTokenizer
    t = AutoTokenizer.from_pretrained(path)
    tmpl = t.chat_template
    return {"bos_id": -1 if t.bos_token_id is None else t.bos_token_id,
            "eos_id": -1 if t.eos_token_id is None else t.eos_token_id,
            "chat_template": tmpl.get("default") if isinstance(tmpl, dict) else tmpl,
            "encode": [{"text": s, "ids": t.encode(s, add_special_tokens=True)} for s in strings[:80]]}


def save(name, tok, config, strings, seed, legacy_merges=False):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    if legacy_merges:
        with open(os.path.join(d, "tokenizer.json"), encoding="utf-8") as f:
            j = json.load(f)
        j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False, indent=2)
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    cfg_path = os.path.join(d, "tokenizer_config.json")
    fc = None
    if config is not None:
        with open(cfg_path, "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=2)
        fc = folder_cases(d, strings)
    cases = dump_cases(tok, name, strings, seed, fc)
    with open(os.path.join(d, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=True, indent=0)
    print(f"{name}: vocab {cases['vocab_size']}, {len(cases['encode'])} strings")


# ---------------------------------------------------------------------------------------------
# tokenizers trained by moetune


TRAIN_STYLES = {"gpt2": None, "llama3": None, "qwen2": None, "deepseek_v3": None}
TRAIN_VOCAB = 1000
TRAIN_SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]


def train_corpus_files():
    return sorted(glob.glob(os.path.join(OUT, "train_corpus", "*.txt")))


def write_train_corpus():
    d = os.path.join(OUT, "train_corpus")
    os.makedirs(d, exist_ok=True)
    for name in ["Apache-2.0", "GPL-3", "MPL-2.0", "Artistic", "BSD"]:
        with open("/usr/share/common-licenses/" + name, "rb") as f:
            data = f.read()
        with open(os.path.join(d, name + ".txt"), "wb") as f:
            f.write(data)
    with open(os.path.join(d, "multilingual.txt"), "w", encoding="utf-8") as f:
        f.write(MULTILINGUAL * 3)


def hf_train_like_moetune(style, lines):
    """HF's BpeTrainer configured as moetune trains, saved the same way."""
    if style == "gpt2":
        pre = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        norm, dec = None, decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    elif style in ("llama3", "qwen2"):
        q = style == "qwen2"
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_RE if q else LLAMA3_RE), behavior="isolated", invert=False),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=not q, use_regex=False)])
        norm = normalizers.NFC() if q else None
        dec = decoders.ByteLevel(add_prefix_space=not q, trim_offsets=not q, use_regex=not q)
    else:
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in DS3_RES] +
                                      [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
        norm, dec = normalizers.Sequence([]), decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok = Tokenizer(models.BPE(ignore_merges=style == "llama3"))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=TRAIN_VOCAB - len(TRAIN_SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    tok.decoder = dec
    tok.add_special_tokens(TRAIN_SPECIALS)
    bos = tok.token_to_id(TRAIN_SPECIALS[0])
    tok.post_processor = processors.TemplateProcessing(single=f"{TRAIN_SPECIALS[0]} $A",
                                                       pair=f"{TRAIN_SPECIALS[0]} $A {TRAIN_SPECIALS[0]}:1 $B:1",
                                                       special_tokens=[(TRAIN_SPECIALS[0], bos)])
    d = json.loads(tok.to_str())
    d["model"]["ignore_merges"] = style == "llama3"
    d["decoder"] = QWEN2_DECODER if style == "qwen2" else d["decoder"]
    return Tokenizer.from_str(json.dumps(d))


def check_trained(moetune, strings):
    files = train_corpus_files()
    lines = []
    for p in files:
        with open(p, "rb") as f:
            lines.extend(split_lines(f.read().decode("utf-8", errors="replace")))
    for style in TRAIN_STYLES:
        d = os.path.join(OUT, "train_" + style)
        if moetune:
            cmd = [moetune, "tokenizer", "train", "--out", d, "--vocab-size", str(TRAIN_VOCAB), "--pretok", style,
                   "--bos", TRAIN_SPECIALS[0], "--eos", TRAIN_SPECIALS[1]]
            for s in TRAIN_SPECIALS:
                cmd += ["--special", s]
            cmd.append(os.path.join(OUT, "train_corpus"))
            subprocess.run(cmd, check=True)
        path = os.path.join(d, "tokenizer.json")
        if not os.path.exists(path):
            print(f"train_{style}: missing (run with --moetune BUILD/moetune)")
            continue
        ours = Tokenizer.from_file(path)
        theirs = hf_train_like_moetune(style, lines)
        with tempfile.TemporaryDirectory() as tmp:
            theirs.save(os.path.join(tmp, "t.json"))
            with open(os.path.join(tmp, "t.json"), "rb") as f:
                hf_bytes = f.read()
        with open(path, "rb") as f:
            our_bytes = f.read()
        same = "byte-identical to" if hf_bytes == our_bytes else "DIFFERENT from"
        print(f"train_{style}: moetune's tokenizer.json is {same} HF BpeTrainer's")
        mismatch = sum(ours.encode(s).ids != theirs.encode(s).ids for s in strings)
        print(f"train_{style}: {mismatch} of {len(strings)} strings encode differently under HF's own training")
        cases = dump_cases(ours, "train_" + style, strings, 7, folder_cases(d, strings))
        cases["hf_trainer_identical"] = hf_bytes == our_bytes
        with open(os.path.join(d, "cases.json"), "w", encoding="utf-8") as f:
            json.dump(cases, f, ensure_ascii=True, indent=0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moetune", help="path of a built moetune binary: (re)train the train_<style> fixtures")
    ap.add_argument("--only-trained", action="store_true", help="skip the model-style fixtures")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    lines = corpus_lines(3_000_000)
    if not args.only_trained:
        sp = sp_vocab(lines)
        built = {}
        builders = [("gpt2", lambda: build_gpt2(lines)), ("llama3", lambda: build_llama3(lines)),
                    ("qwen2", lambda: build_qwen2(lines)), ("deepseek_v3", lambda: build_deepseek_v3(lines)),
                    ("mixtral", lambda: build_mixtral(sp)), ("sp_metaspace", lambda: build_sp_metaspace(sp)),
                    ("custom_split", lambda: build_custom_split(built["gpt2"])),
                    ("custom_ws", lambda: build_custom_ws(built["gpt2"])),
                    ("custom_meta", lambda: build_custom_meta(sp)),
                    ("custom_affix", lambda: build_custom_affix(lines))]
        for i, (name, build) in enumerate(builders):
            tok, config = build()
            built[name] = tok
            specials = [t.content for t in tok.get_added_tokens_decoder().values()][:8]
            save(name, tok, config, test_strings(specials, lines, 1000 + i), 2000 + i, legacy_merges=name == "gpt2")
    if not os.path.isdir(os.path.join(OUT, "train_corpus")):
        write_train_corpus()
    check_trained(args.moetune, test_strings(TRAIN_SPECIALS, lines, 99))


if __name__ == "__main__":
    sys.exit(main())
