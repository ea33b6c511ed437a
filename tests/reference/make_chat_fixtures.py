#!/usr/bin/env python3
"""make_chat_fixtures.py — builds tests/fixtures/chat/ with Hugging Face transformers: for each
chat template in tests/fixtures/chat/templates/ (DeepSeek-V3, Qwen2, Qwen2.5, Qwen3, Mixtral,
Llama-3, Llama-3.1), a tokenizer folder's tokenizer_config.json and the exact text
apply_chat_template(tokenize=False) gives for a set of conversations (or the error it raises),
plus snippets.json: small templates rendered in transformers' own jinja environment, one per
filter, test, method and whitespace rule moetune's renderer implements.

The C suite (tests/test_chat.c) never runs Python; it compares its output byte for byte.

Usage: /work/venv/bin/python tests/reference/make_chat_fixtures.py
"""
import json
import os
import shutil
import sys
import tempfile
import traceback

import jinja2
import transformers
from transformers import AutoTokenizer
from transformers.utils import chat_template_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "chat")
TOKENIZERS = os.path.join(ROOT, "fixtures", "tokenizers")


def template(name):
    with open(os.path.join(OUT, "templates", name), encoding="utf-8") as f:
        return f.read()


def msg(role, content):
    return {"role": role, "content": content}


def S(c):
    return msg("system", c)


def U(c):
    return msg("user", c)


def A(c):
    return msg("assistant", c)


# Conversations of role/content messages: what mt_chat_render takes. Every template renders
# every one; where transformers raises, the fixture records the error instead.
CONVERSATIONS = {
    "single_user": [U("Hello!")],
    "system_user": [S("You are a terse assistant."), U("What is 2+2?")],
    "multi_turn": [
        S("You are a helpful assistant."),
        U("Name a prime number."),
        A("7"),
        U("And another?"),
        A("11 is prime as well."),
        U("Thanks."),
    ],
    "no_system_multi": [U("Hi"), A("Hello, how can I help?"), U("Tell me a joke."), A("Why did the chicken cross the road?")],
    "unicode": [
        S("Réponds en français. 日本語もOK。"),
        U("Grüße, 世界! 😀 e\u0301 \u200fעברית\u200f \u00a0nbsp"),
        A("日本語の返事です。 ✓ — ½ ∑"),
        U("Ω≈ç√∫ \t tab and trailing spaces   \n"),
    ],
    "whitespace": [U("  leading and trailing  \n\n"), A("\n answer \n"), U("\r\nwindows\r\n")],
    "template_like": [U("{{ not a tag }} {% if %} {# x #}"), A("'quotes' \"double\" \\backslash \\n")],
    "empty_content": [U(""), A("")],
    "ends_with_assistant": [U("Say hi."), A("hi")],
    "null_content": [U("hi"), msg("assistant", None)],
    "bad_alternation": [U("one"), U("two")],
    "tool_role": [U("What's the weather?"), msg("tool", "sunny")],
    "think": [
        U("Solve 3*4."),
        A("<think>\nmultiply three by four\n</think>\n\n12"),
        U("And 5*6?"),
        A("<think>\nfive sixes\n</think>\n\n30"),
    ],
    "system_only": [S("Only a system prompt.")],
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name, e.g. Zürich"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "now", "description": "The time", "parameters": {"type": "object", "properties": {}}}},
]


def tool_call(name, args, as_string=False):
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(args) if as_string else args}}


# Conversations with tools, tool calls and extra template arguments: rendered through
# apply_chat_template, the variables jinja received are recorded, so the C test can render the
# same template with the same variables (mt_jinja_render).
VARS_CASES = {
    "qwen2_5": [
        ("tools", dict(messages=[S("Be brief."), U("Weather in Paris?")], tools=TOOLS, add_generation_prompt=True)),
        (
            "tool_round_trip",
            dict(
                messages=[
                    U("Weather in Paris and Oslo?"),
                    {"role": "assistant", "content": "", "tool_calls": [tool_call("get_weather", {"city": "Paris"}), tool_call("get_weather", {"city": "Oslo", "unit": "c"})]},
                    msg("tool", '{"temp": 21}'),
                    msg("tool", '{"temp": 3}'),
                    A("Paris 21°, Oslo 3°."),
                ],
                tools=TOOLS,
            ),
        ),
    ],
    "qwen3": [
        ("tools", dict(messages=[S("Be brief."), U("Weather in Paris?")], tools=TOOLS, add_generation_prompt=True)),
        ("no_thinking", dict(messages=[U("Hi")], add_generation_prompt=True, enable_thinking=False)),
        (
            "reasoning_content",
            dict(messages=[U("2+2?"), {"role": "assistant", "content": "4", "reasoning_content": "\nadd them\n"}, U("3+3?")], add_generation_prompt=True),
        ),
        (
            "multi_step_tools",
            dict(
                messages=[
                    U("Weather in Rome?"),
                    {"role": "assistant", "content": "Let me check.", "tool_calls": [tool_call("get_weather", {"city": "Rome"}, as_string=True)]},
                    msg("tool", "sunny, 25"),
                    {"role": "assistant", "content": "<think>\nit is sunny\n</think>\n\nSunny and 25 degrees.", "tool_calls": [{"name": "now", "arguments": {}}]},
                    msg("tool", "12:00"),
                ],
                tools=TOOLS,
                add_generation_prompt=True,
            ),
        ),
    ],
    "llama3_1": [
        ("tools_in_user", dict(messages=[S("  Use tools.  "), U("Weather in Lima?")], tools=TOOLS, add_generation_prompt=True)),
        ("tools_in_system", dict(messages=[U("Weather in Lima?")], tools=TOOLS, tools_in_user_message=False, date_string="01 Jan 2025")),
        (
            "builtin_tools",
            dict(
                messages=[
                    U("Search for moetune."),
                    {"role": "assistant", "tool_calls": [tool_call("brave_search", {"query": "moetune", "count": "3"})]},
                    msg("ipython", {"results": ["a", "b"]}),
                ],
                builtin_tools=["brave_search", "wolfram_alpha", "code_interpreter"],
                add_generation_prompt=True,
            ),
        ),
        (
            "json_tool_call",
            dict(
                messages=[U("Weather in Lima?"), {"role": "assistant", "tool_calls": [tool_call("get_weather", {"city": "Lima", "unit": "c"})]}, msg("tool", "18")],
                tools=TOOLS,
            ),
        ),
        ("two_tool_calls", dict(messages=[U("x"), {"role": "assistant", "tool_calls": [tool_call("now", {}), tool_call("now", {})]}])),
        ("tools_without_user", dict(messages=[S("sys")], tools=TOOLS)),
    ],
    "deepseek_v3": [
        (
            "tool_calls",
            dict(
                messages=[
                    S("System one."),
                    S("System two."),
                    U("Weather in Lima and Quito?"),
                    {"role": "assistant", "content": "", "tool_calls": [tool_call("get_weather", {"city": "Lima"}, True), tool_call("get_weather", {"city": "Quito"}, True)]},
                    msg("tool", "18"),
                    msg("tool", "15"),
                    A("Lima 18, Quito 15."),
                ],
                add_generation_prompt=True,
            ),
        ),
        ("pending_tool_output", dict(messages=[U("t?"), {"role": "assistant", "content": "", "tool_calls": [tool_call("now", {}, True)]}, msg("tool", "noon")], add_generation_prompt=True)),
        ("content_none_dropped", dict(messages=[U("t?"), {"role": "assistant", "content": None, "tool_calls": [tool_call("now", {}, True)]}])),
    ],
}

# tokenizer_config.json of each fixture: the fixture tokenizer's own special tokens (they must
# be in its vocabulary), and the real model's template.
MODELS = {
    "deepseek_v3": {
        "tokenizer": "deepseek_v3",
        "template": "deepseek_v3.jinja",
        "config": {
            "bos_token": {"__type": "AddedToken", "content": "<｜begin▁of▁sentence｜>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
            "eos_token": {"__type": "AddedToken", "content": "<｜end▁of▁sentence｜>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
            "pad_token": {"__type": "AddedToken", "content": "<｜▁pad▁｜>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": True,
            "model_max_length": 16384,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
        "template_list": True,
    },
    "qwen2": {
        "tokenizer": "qwen2",
        "template": "qwen2_57b_a14b_instruct.jinja",
        "config": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "errors": "replace", "tokenizer_class": "PreTrainedTokenizerFast"},
    },
    "qwen2_5": {
        "tokenizer": "qwen2",
        "template": "qwen2_5_instruct.jinja",
        "config": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "errors": "replace", "tokenizer_class": "PreTrainedTokenizerFast"},
    },
    "qwen3": {
        "tokenizer": "qwen2",
        "template": "qwen3.jinja",
        "config": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "errors": "replace", "tokenizer_class": "PreTrainedTokenizerFast"},
    },
    "mixtral": {
        "tokenizer": "mixtral",
        "template": "mixtral_8x7b_instruct_v0_1.jinja",
        "config": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "tokenizer_class": "PreTrainedTokenizerFast"},
    },
    "mixtral_original": {
        "tokenizer": "mixtral",
        "template": "mixtral_8x7b_instruct_v0_1_original.jinja",
        "config": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "tokenizer_class": "PreTrainedTokenizerFast"},
    },
    "llama3": {
        "tokenizer": "llama3",
        "template": "llama3_8b_instruct.jinja",
        "config": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "tokenizer_class": "PreTrainedTokenizerFast"},
    },
    "llama3_1": {
        "tokenizer": "llama3",
        "template": "llama3_1_8b_instruct.jinja",
        "config": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "tokenizer_class": "PreTrainedTokenizerFast"},
    },
    # Which special tokens reach the template: named ones as strings or AddedToken objects,
    # other "*_token" strings, extra_special_tokens entries; lists are not variables.
    "special_tokens": {
        "tokenizer": "mixtral",
        "template": "special_tokens.jinja",
        "config": {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": {"__type": "AddedToken", "content": "<unk>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True},
            "pad_token": "</s>",
            "image_token": "<image>",
            "boi_token": {"__type": "AddedToken", "content": "<boi>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True},
            "extra_special_tokens": {"audio_token": "<audio>", "video_token": {"__type": "AddedToken", "content": "<video>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}},
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    },
}


def error_record(e):
    line = None
    if isinstance(e, jinja2.TemplateSyntaxError):
        line = e.lineno
    else:
        for fr in traceback.extract_tb(e.__traceback__):
            if fr.filename == "<template>":
                line = fr.lineno
    return {"type": type(e).__name__, "message": str(e), "line": line}


class Recorder:
    """Wraps transformers' compiled template so that the variables jinja receives are kept."""

    def __init__(self):
        self.calls = []
        self.orig = chat_template_utils._compile_jinja_template

    def __enter__(self):
        def compile_and_record(src):
            tmpl = self.orig(src)
            rec = self

            class Proxy:
                def render(self, **kw):
                    rec.calls.append(kw)
                    return tmpl.render(**kw)

            return Proxy()

        chat_template_utils._compile_jinja_template = compile_and_record
        return self

    def __exit__(self, *a):
        chat_template_utils._compile_jinja_template = self.orig


def build_model(name, spec, tmp):
    tmpl = template(spec["template"])
    cfg = dict(spec["config"])
    cfg["chat_template"] = [{"name": "default", "template": tmpl}, {"name": "tool_use", "template": "{{ tools }}"}] if spec.get("template_list") else tmpl
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)
        f.write("\n")
    work = os.path.join(tmp, name)
    os.makedirs(work)
    shutil.copy(os.path.join(TOKENIZERS, spec["tokenizer"], "tokenizer.json"), work)
    shutil.copy(os.path.join(folder, "tokenizer_config.json"), work)
    tok = AutoTokenizer.from_pretrained(work, local_files_only=True)
    assert tok.get_chat_template() == tmpl

    cases = []
    rendered = {}
    for conv_name, conv in CONVERSATIONS.items():
        for agp in (False, True):
            case = {"name": f"{conv_name}/{'gen' if agp else 'nogen'}", "messages": conv, "add_generation_prompt": agp}
            try:
                case["expected"] = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=agp)
                rendered[(conv_name, agp)] = case["expected"]
            except Exception as e:  # the fixture records what transformers raises
                case["error"] = error_record(e)
            cases.append(case)

    # Prefix properties over every conversation that renders: (a) the rendering of
    # messages[:k] starts the rendering of messages[:n]; (b) the generation prompt after
    # messages[:k] starts the rendering of messages[:k+1] when message k is the assistant's.
    def render(msgs, agp):
        try:
            return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp)
        except Exception:
            return None

    prefix_stable, prompt_stable = True, True
    checked = 0
    for conv_name, conv in CONVERSATIONS.items():
        full = render(conv, False)
        if full is None:
            continue
        for k in range(1, len(conv)):
            part = render(conv[:k], False)
            if part is not None:
                checked += 1
                prefix_stable &= full.startswith(part)
            if conv[k]["role"] == "assistant":
                prompt = render(conv[:k], True)
                longer = render(conv[: k + 1], False)
                if prompt is not None and longer is not None:
                    prompt_stable &= longer.startswith(prompt)

    vars_cases = []
    for case_name, kwargs in VARS_CASES.get(name, []):
        kwargs = dict(kwargs)
        messages = kwargs.pop("messages")
        case = {"name": case_name}
        with Recorder() as rec:
            try:
                case["expected"] = tok.apply_chat_template(messages, tokenize=False, **kwargs)
            except Exception as e:
                case["error"] = error_record(e)
        if not rec.calls:
            raise SystemExit(f"{name}/{case_name}: transformers failed before rendering: {case.get('error')}")
        # as text, so that the C test parses exactly what was written (1.0 stays a float)
        case["vars_json"] = json.dumps(rec.calls[-1], ensure_ascii=False)
        vars_cases.append(case)

    out = {
        "tokenizer": spec["tokenizer"],
        "template": spec["template"],
        "special_tokens_map": tok.special_tokens_map,
        "prefix_stable": prefix_stable,
        "prompt_prefix_stable": prompt_stable,
        "cases": cases,
        "vars_cases": vars_cases,
    }
    with open(os.path.join(folder, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n_err = sum("error" in c for c in cases) + sum("error" in c for c in vars_cases)
    print(f"{name}: {len(cases)} conversations, {len(vars_cases)} with tools/kwargs, {n_err} errors, "
          f"prefix-stable={prefix_stable} prompt-prefix-stable={prompt_stable} ({checked} prefixes)")


# ---- snippets: (name, template, variables); every one is rendered by transformers' environment ----

MSGS = [
    {"role": "system", "content": "Sys"},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
    {"role": "user", "content": "  Bye  "},
]
V = {
    "messages": MSGS,
    "s": "  Hello, World! ",
    "u": "Grüße 世界 😀 straße ǅ",
    "n": 7,
    "f": 2.5,
    "neg": -3,
    "xs": [3, 1, 2],
    "words": ["a", "b", "c"],
    "d": {"b": 1, "a": [1, 2], "c": {"x": None, "y": True}},
    "none": None,
    "t": True,
    "empty": "",
    "big": 12345678901234,
    "nested": [[1, 2], [3, 4]],
}

SNIPPETS = [
    # --- whitespace control, trim_blocks, lstrip_blocks, comments, raw ---
    ("ws_trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter", {}),
    ("ws_lstrip_blocks", "line\n    {% if true %}x{% endif %}\n  {# c #}\nend", {}),
    ("ws_minus", "a   {{- 'b' -}}   c\n\n{%- if true -%}\n  d  \n{%- endif -%}\n e", {}),
    ("ws_plus", "a\n    {%+ if true %}x{% endif +%}\nb", {}),
    ("ws_var_no_trim", "a\n{{ 'b' }}\nc\n", {}),
    ("ws_crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc\r\n", {}),
    ("ws_comment_minus", "x  {#- comment -#}  y", {}),
    ("ws_raw", "{% raw %}{{ not }}{% endraw %} and {%- raw -%}  {% x %}  {%- endraw %}!", {}),
    ("ws_lstrip_var", "  {{ 1 }}\n  {% if 1 %}2{% endif %}", {}),
    ("ws_trailing_newline_kept_once", "x\n\n", {}),
    ("ws_unicode_space", "a\u3000{%- if 1 %}b{% endif %}", {}),
    # --- literals and operators ---
    ("lit_numbers", "{{ 1 }} {{ 1.5 }} {{ 1e3 }} {{ 0x1F }} {{ 0o17 }} {{ 0b101 }} {{ 1_000 }} {{ 2.0 }} {{ 1e-5 }} {{ 1e20 }} {{ 123456789.0 }} {{ 0.1 + 0.2 }}", {}),
    ("lit_strings", "{{ 'a\\tb' }}|{{ \"q'\" }}|{{ 'x' 'y' }}|{{ '\\u00e9\\x41\\101' }}|{{ 'a\\qb' }}", {}),
    ("lit_containers", "{{ [1, 'a', none, true] }} {{ (1,) }} {{ (1, 2) }} {{ {'k': 'v', 1: 2} }} {{ [] }} {{ {} }}", {}),
    ("lit_repr_quotes", "{{ [\"it's\", 'say \"hi\"', 'both \\' \"', 'nl\\n', 'é😀\\x00\\x7f'] }}", {}),
    ("op_arith", "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 7 / 2 }} {{ 6 / 3 }} {{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ -2 ** 2 }} {{ 2 ** -1 }}", {}),
    ("op_float_mod", "{{ 7.5 % 2 }} {{ -7.5 % 2 }} {{ 7.5 // -2 }} {{ 1 / 3 }}", {}),
    ("op_concat", "{{ 'a' ~ 1 ~ none ~ [1] }} {{ 'x' + 'y' }} {{ [1] + [2] }} {{ 'ab' * 3 }} {{ 2 * [0] }}", {}),
    ("op_compare", "{{ 1 < 2 < 3 }} {{ 1 < 2 > 3 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' != 'a' }} {{ none == none }}", {}),
    ("op_in", "{{ 'a' in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }} {{ '' in 'x' }}", {}),
    ("op_logic", "{{ 0 or 'x' }} {{ 1 and 'y' }} {{ not 0 }} {{ none or [] }} {{ '' and 1 }} {{ not not 'a' }}", {}),
    ("op_condexpr", "{{ 'y' if n > 5 else 'n' }}|{{ 'y' if n < 5 }}|{{ 1 if 0 else 2 if 0 else 3 }}", V),
    ("op_unary", "{{ -n }} {{ +n }} {{ -f }} {{ - -1 }} {{ -(xs|length) }}", V),
    ("op_precedence_filter", "{{ -1|abs }} {{ 'a' ~ 'b'|upper }} {{ (1 + 2)|string }}x", {}),
    # --- variables, attributes, items, slices ---
    ("var_attr_item", "{{ messages[0].role }} {{ messages[1]['content'] }} {{ messages[-1].content }} {{ d.b }} {{ d['a'][1] }} {{ d.c.y }} {{ nested[1][0] }} {{ nested.0 }}", V),
    ("var_undefined_renders_empty", "[{{ nope }}][{{ d.missing }}][{{ messages[9] }}][{{ none.x }}]", V),
    ("var_slices", "{{ xs[1:] }} {{ xs[:-1] }} {{ xs[::-1] }} {{ xs[::2] }} {{ s[2:7] }} {{ u[::-1] }} {{ u[1:4] }} {{ xs[5:] }} {{ xs[-9:1] }} {{ u[-3] }}", V),
    ("var_dict_method_precedence", "{{ d.items()|list }} {{ d.keys()|list }} {{ d.values()|list|length }} {{ d.get('b') }} {{ d.get('zz', 'dflt') }} {{ d.get('zz') }}", V),
    ("var_loop_attrs", "{% for x in words %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem|default('-') }}{{ loop.nextitem|default('-') }}{{ loop.cycle('o', 'e') }};{% endfor %}", V),
    ("var_loop_else", "{% for x in [] %}x{% else %}empty{% endfor %}|{% for x in xs if x > 1 %}{{ x }}{{ loop.length }}{% endfor %}", V),
    ("var_loop_unpack", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for a, b in nested %}{{ a + b }}{% endfor %}", V),
    ("var_loop_dict_string", "{% for k in d %}{{ k }}{% endfor %}|{% for ch in 'hé😀' %}[{{ ch }}]{% endfor %}", V),
    ("var_loop_scope", "{% set x = 1 %}{% for i in xs %}{% set x = i %}{% endfor %}{{ x }}", V),
    ("var_namespace", "{% set ns = namespace(total=0, seen=[]) %}{% for i in xs %}{% set ns.total = ns.total + i %}{% endfor %}{{ ns.total }} {{ ns.seen }}", V),
    ("var_namespace_dict_arg", "{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}", {}),
    ("var_break_continue", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("var_set_block", "{% set body %}\n  Hello {{ n }}\n{% endset %}[{{ body }}]{% set up | upper | trim %} shout {% endset %}[{{ up }}]", V),
    ("var_set_tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c = 1, 2 %}{{ c }}", {}),
    ("var_filter_block", "{% filter upper %}abc {{ 'def' }}{% endfilter %}", {}),
    ("var_override_passed", "{% set messages = messages[1:] %}{{ messages|length }}", V),
    ("var_generation_tag", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% endif %}{% endfor %}", V),
    ("var_print_tag", "{% print 'a', 1 %}", {}),
    ("var_range", "{{ range(3)|list }} {{ range(1, 7, 2)|list }} {{ range(5, 0, -2)|list }} {{ range(0)|list }}", {}),
    ("var_dict_global", "{{ dict(a=1, b='x') }} {{ dict([('k', 2)]) }} {{ dict({'z': 0}, y=1) }}", {}),
    ("var_strftime_type", "{{ strftime_now('%Y')|length }}", {}),
    # --- filters ---
    ("f_trim", "[{{ s|trim }}][{{ '\\n\\t x \\u3000'|trim }}][{{ 'xxaxx'|trim('x') }}][{{ none|trim }}][{{ nope|trim }}]", V),
    ("f_case", "{{ s|upper }} {{ s|lower }} {{ u|upper }} {{ u|lower }} {{ 'hello wORLD'|capitalize }} {{ 'hello-world (foo) [bar] <baz>x'|title }} {{ u|title }}", V),
    ("f_length", "{{ s|length }} {{ u|length }} {{ xs|length }} {{ d|count }} {{ nope|length }} {{ ''|length }}", V),
    ("f_default", "{{ nope|default('D') }} {{ none|default('D') }} {{ ''|default('D', true) }} {{ 0|d('z', boolean=true) }} {{ 'v'|default('D') }} [{{ nope|default }}]", V),
    ("f_first_last", "{{ xs|first }} {{ xs|last }} {{ s|first }} {{ u|last }} {{ d|first }} [{{ []|first }}] [{{ []|last }}]", V),
    ("f_join", "{{ words|join(', ') }} {{ xs|join }} {{ 'abc'|join('-') }} {{ messages|join('|', attribute='role') }} {{ [1, none, nope]|join(',') }}", V),
    ("f_list_reverse", "{{ 'abc'|list }} {{ xs|reverse|list }} {{ 'héllo'|reverse }} {{ d|list }} {{ d|reverse|list }}", V),
    ("f_int_float", "{{ '42'|int }} {{ ' -7 '|int }} {{ '3.9'|int }} {{ 'x'|int }} {{ 'x'|int(5) }} {{ 3.99|int }} {{ '0x1A'|int(0, 16) }} {{ '0b11'|int(base=0) }} {{ true|int }} {{ none|int }} {{ '1_000'|int }}", V),
    ("f_float", "{{ '2.5'|float }} {{ '1e3'|float }} {{ 'x'|float }} {{ 'x'|float(1.5) }} {{ 3|float }} {{ ' inf '|float }} {{ '-nan'|float }} {{ none|float }}", V),
    ("f_abs", "{{ -3|abs }} {{ neg|abs }} {{ -2.5|abs }} {{ true|abs }}", V),
    ("f_replace", "{{ s|replace('l', 'L') }} {{ s|replace('l', 'L', 2) }} {{ 'abc'|replace('', '-') }} {{ 'aaa'|replace('a', 'b', 0) }}", V),
    ("f_string_safe", "{{ n|string ~ 'x' }} {{ none|string }} {{ xs|string }} {{ [1]|safe }} [{{ nope|string }}]", V),
    ("f_items", "{{ d|items|list }} {% for k, v in {'x': 1}|items %}{{ k }}{{ v }}{% endfor %} [{% for x in nope|items %}x{% endfor %}]", V),
    ("f_map", "{{ messages|map(attribute='role')|list }} {{ words|map('upper')|join }} {{ messages|map(attribute='missing', default='?')|list }} {{ nested|map('join', '+')|list }} {{ [' a ', 'b ']|map('trim')|list }}", V),
    ("f_map_attr_path", "{{ messages|selectattr('tool_calls')|map(attribute='tool_calls.0.function.name')|list }}", V),
    ("f_select_reject", "{{ xs|select('odd')|list }} {{ xs|reject('odd')|list }} {{ [0, 1, '', 'a', none]|select|list }} {{ xs|select('gt', 1)|list }} {{ xs|select('equalto', 3)|list }} {{ words|reject('in', ['b'])|list }}", V),
    ("f_selectattr", "{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|list }} {{ messages|rejectattr('role', 'eq', 'user')|list|length }} {{ messages|selectattr('tool_calls', 'defined')|list|length }} {{ messages|selectattr('tool_calls')|list|length }}", V),
    ("f_tojson", "{{ d|tojson }}\n{{ d|tojson(indent=2) }}\n{{ d|tojson(sort_keys=true) }}\n{{ u|tojson }}\n{{ u|tojson(ensure_ascii=true) }}\n{{ [1.0, 1e20, -0.0, 1.5e-7, none, true]|tojson }}\n{{ d|tojson(separators=(',', ':')) }}\n{{ 'tab\\t\"q\" \\\\ \\x01'|tojson }}\n{{ d|tojson(indent='\\t') }}\n{{ {}|tojson(indent=2) }}{{ []|tojson(indent=2) }}\n{{ {1: 'a', none: 'b', 2.5: 'c', true: 'd'}|tojson }}", V),
    ("f_tojson_messages", "{{ messages|tojson(indent=4) }}", V),
    ("f_chain", "{{ messages[1].content|lower|replace('hi', 'HI')|trim|length }}", V),
    # --- tests ---
    ("t_types", "{{ n is number }}{{ f is float }}{{ n is integer }}{{ t is integer }}{{ t is boolean }}{{ t is number }}{{ s is string }}{{ xs is sequence }}{{ d is mapping }}{{ xs is mapping }}{{ s is iterable }}{{ n is iterable }}{{ none is none }}{{ nope is defined }}{{ nope is undefined }}{{ nope is iterable }}{{ nope is sequence }}", V),
    ("t_values", "{{ n is odd }}{{ n is even }}{{ 9 is divisibleby 3 }}{{ 9 is divisibleby(2) }}{{ t is true }}{{ 1 is true }}{{ false is false }}{{ 0 is false }}{{ 'abc' is lower }}{{ 'ABC' is upper }}{{ 'aBc' is lower }}{{ '12' is upper }}", V),
    ("t_compare", "{{ 3 is gt 2 }}{{ 3 is ge 3 }}{{ 3 is lt 2 }}{{ 3 is le 3 }}{{ 3 is eq 3 }}{{ 3 is ne 3 }}{{ xs|select('==', 3)|list }}{{ xs|select('!=', 3)|list }}{{ xs|select('>', 1)|list }}{{ xs|select('<=', 2)|list }}{{ 'a' is in 'cat' }}{{ 1 is in [2] }}{{ 3 is equalto 3 }}{{ 3 is greaterthan 1 }}{{ 3 is lessthan 1 }}", V),
    ("t_not_and_callable", "{{ n is not string }}{{ not n is string }}{{ range is callable }}{{ n is callable }}{{ 'x'.upper is callable }}{{ none is sameas none }}{{ n is sameas 7 }}{{ true is sameas true }}", V),
    # --- str methods ---
    ("m_strip", "[{{ s.strip() }}][{{ s.lstrip() }}][{{ s.rstrip() }}][{{ 'xxhixx'.strip('x') }}][{{ '\\n\\nA\\n'.lstrip('\\n') }}][{{ 'abcba'.rstrip('ab') }}][{{ s.strip(none) }}]", V),
    ("m_split", "{{ 'a,b,,c'.split(',') }} {{ '  a  b  '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a b c'.rsplit(' ', 1) }} {{ '  a  b  '.rsplit(none, 1) }} {{ 'a</think>b</think>c'.split('</think>')[-1] }} {{ ''.split() }} {{ ''.split(',') }} {{ 'x'.split('x') }}", V),
    ("m_splitlines", "{{ 'a\\nb\\r\\nc\\rd\\n'.splitlines() }} {{ 'a\\nb\\n'.splitlines(true) }} {{ ''.splitlines() }}", V),
    ("m_startswith", "{{ s.startswith('  He') }}{{ s.endswith('! ') }}{{ 'abc'.startswith(('x', 'a')) }}{{ 'abc'.endswith(('x', 'y')) }}{{ 'abc'.startswith('b', 1) }}{{ 'abc'.startswith('', 3) }}{{ 'abc'.startswith('', 4) }}{{ 'abc'.endswith('b', 0, 2) }}", V),
    ("m_case", "{{ s.upper() }} {{ s.lower() }} {{ 'hello wORLD 3rd'.title() }} {{ 'hELLO'.capitalize() }} {{ u.upper() }} {{ u.title() }}", V),
    ("m_find", "{{ s.find('l') }} {{ s.rfind('l') }} {{ s.find('zz') }} {{ s.index('W') }} {{ u.find('界') }} {{ 'aaa'.count('a') }} {{ 'aaaa'.count('aa') }} {{ 'abc'.count('') }} {{ 'abc'.find('', 5) }} {{ 'abcabc'.find('b', 2) }} {{ 'abcabc'.rfind('b', 0, 4) }}", V),
    ("m_replace_join", "{{ s.replace('l', '_') }} {{ s.replace('l', '_', 1) }} {{ '-'.join(words) }} {{ ''.join(['x', 'y']) }} {{ ', '.join(d) }}", V),
    ("m_predicates", "{{ '123'.isdigit() }}{{ '12a'.isdigit() }}{{ 'abc'.isalpha() }}{{ 'ab1'.isalnum() }}{{ ' \\t'.isspace() }}{{ ''.isspace() }}{{ 'abc'.islower() }}{{ 'ABC'.isupper() }}{{ '²'.isdigit() }}{{ '²'.isdecimal() }}{{ '½'.isnumeric() }}{{ 'ü'.isalpha() }}", V),
    ("m_format", "{{ '{} and {}'.format('a', 1) }} {{ '{1}{0}'.format('x', 'y') }} {{ '{name}!'.format(name='Bob') }} {{ '{{}} {!r}'.format('q') }} {{ '{:>5}|{:<4}|{:^7}|{:05d}|{:.2f}'.format('ab', 'c', 'mid', 42, 3.14159) }}", V),
    ("m_list", "{{ xs.index(2) }} {{ xs.count(3) }} {{ words.index('c') }}", V),
    # --- differences a comparison with jinja over the fuzzer's corpus found (since fixed) ---
    ("d_lazy_filter_args", "[{{ nope|map('nosuch')|list }}][{{ []|select('nosuch')|list }}][{{ []|selectattr('a', 'nosuch')|list }}][{{ []|map|list }}]", {}),
    ("d_float_int_text", "{{ '\x1e1'|float }} {{ '\u30001'|float }} {{ '2.\\x005'|float }} {{ '\u00a01 '|int }} {{ '\x1c1'|int(7) }} {{ '1e6\\x00'|float(2) }}", {}),
    ("d_int_text", "{{ '4000000000000000000009|x'|int }} {{ '0111'|int(base=1) }} {{ '0_1'|int(base=0) }} {{ '00'|int(base=0) }} {{ '1__0'|int }} {{ '_1'|int }} {{ '0x_1f'|int(base=16) }}", {}),
    ("d_sameas_undefined", "{{ a is sameas b }}{{ none is sameas none }}", {}),
    ("d_format_zero_flag", "{{ '{:05}'.format('ab') }} {{ '{:05}'.format(-3) }} {{ '{:+d}'.format(3) }} {{ '{:x<4}'.format(7) }}", {}),
    ("d_format_nul_type_float", "{{ '{:.2\\x00}'.format(3.14159) }}", {}),
    ("d_int_bad_base", "{{ '12'|int(base=1.6) }} {{ '12'|int(base=nope) }} {{ 7|int(base='x') }}", {}),
    ("d_title_nul", "{{ ('a\\x00b c'|title)[2:] }}", {}),
    ("d_comment_at_end", "d {#", {}),
    ("d_raw_at_end", "x {%- raw -%}  ", {}),
    # --- errors (transformers raises; the record keeps the type and the template line) ---
    ("e_dict_undefined", "\n{{ dict(nope, b=1) }}", {}),
    ("e_splitlines_undefined", "{{ 'a'.splitlines(nope) }}", {}),
    ("e_format_no_precision", "{{ '{:.}'.format(1) }}", {}),
    ("e_format_eq_string", "{{ '{:=5}'.format('ab') }}", {}),
    ("e_format_nul_type", "{{ '{:.2\\x00}'.format(1) }}", {}),
    ("e_comment_unterminated", "d {# x", {}),
    ("e_format_mixed_numbering", "{{ '{}{0}'.format('x', 'y') }}", {}),
    ("e_format_mixed_numbering_2", "{{ '{0}{}'.format('x', 'y') }}", {}),
    ("e_slice_step_zero", "{{ xs[::0] }}", V),
    ("e_slice_bad_index", "\n{{ xs['a':] }}", V),
    ("e_slice_undefined_index", "{{ xs[nope:] }}", V),
    ("e_slice_int", "{{ n[1:] }}", V),
    ("e_slice_dict", "{{ d[1:] }}", V),
    ("e_slice_undefined", "{{ nope[1:] }}", V),
    ("e_syntax_unclosed_if", "line1\n{% if true %}\nline3\n", {}),
    ("e_syntax_bad_token", "ok\nok\n{{ 1 + }}\n", {}),
    ("e_syntax_unknown_tag", "a\n\n{% frobnicate %}", {}),
    ("e_syntax_unknown_filter", "{{ 'a' }}\n{{ 'x'|nosuchfilter }}", {}),
    ("e_syntax_unknown_test", "\n\n\n{{ 1 is nosuchtest }}", {}),
    ("e_syntax_endfor_mismatch", "{% for x in xs %}\n{% endif %}", V),
    ("e_syntax_unterminated_string", "x\n{{ 'abc }}", {}),
    ("e_syntax_unterminated_tag", "x\n{{ 1 ", {}),
    ("e_syntax_break_outside", "{% break %}", {}),
    ("e_syntax_bad_assign", "\n{% set 1 = 2 %}", {}),
    ("e_syntax_extra_paren", "{{ (1)) }}", {}),
    ("e_syntax_missing_comment_end", "a\n{# never closed", {}),
    ("e_raise", "ok\n{% if true %}\n{{ raise_exception('Roles must alternate!') }}\n{% endif %}", {}),
    ("e_undefined_attr_of_undefined", "\n{{ nope.x.y }}", {}),
    ("e_undefined_add", "\n\n{{ nope + 'x' }}", {}),
    ("e_type_add", "{{ 'a' + 1 }}", {}),
    ("e_div_zero", "{{ 1 // 0 }}", {}),
    ("e_runtime_filter_name", "\n{{ xs|map('nosuch')|list }}", V),
    ("e_tojson_undefined", "\n{{ nope|tojson }}", {}),
    ("e_range_too_big", "{{ range(100001)|length }}", {}),
    ("e_unsafe_append", "\n{{ xs.append(4) }}", V),
    ("e_namespace_underscore", "{% set ns = namespace(_x=1) %}", {}),
    ("e_not_iterable", "\n{% for i in 5 %}{% endfor %}", {}),
    ("e_unpack", "{% set a, b = [1] %}", {}),
    ("e_index_missing", "{{ 'abc'.index('z') }}", {}),
    ("e_int_undefined", "{{ nope|int }}", {}),
    ("e_call_undefined", "{{ nope() }}", {}),
    ("e_unary_binds_before_filter", "{{ -xs|length }}", V),
]


def build_snippets():
    out = []
    for name, src, variables in SNIPPETS:
        case = {"name": name, "template": src, "vars_json": json.dumps(variables, ensure_ascii=False)}
        try:
            case["expected"] = chat_template_utils._compile_jinja_template(src).render(**variables)
        except Exception as e:
            case["error"] = error_record(e)
        # the C test reads strings with cJSON, which ends them at a NUL
        if "\x00" in src or "\x00" in case.get("expected", ""):
            raise SystemExit(f"snippet {name}: a NUL in the template or the output cannot be compared")
        if name.startswith("e_") != ("error" in case):
            raise SystemExit(f"snippet {name}: expected {'an error' if name.startswith('e_') else 'output'}, got {case}")
        out.append(case)
    with open(os.path.join(OUT, "snippets.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"snippets: {len(out)} ({sum('error' in c for c in out)} errors)")


def main():
    print(f"transformers {transformers.__version__}, jinja2 {jinja2.__version__}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in MODELS.items():
            build_model(name, spec, tmp)
    build_snippets()


if __name__ == "__main__":
    main()
