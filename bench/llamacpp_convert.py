"""llamacpp_convert.py — runs one of llama.cpp's converters (convert_hf_to_gguf.py,
convert_lora_to_gguf.py) on a moetune model. moetune's tokenizers are DeepSeek-V3-style
byte-level BPE with a small learnt vocabulary, which the converter cannot recognise by the hash
of a full vocabulary's tokenization; the pre-tokenizer is named directly instead.

usage: python bench/llamacpp_convert.py LLAMA_CPP_SRC convert_hf_to_gguf.py MODEL_DIR --outfile X.gguf --outtype f32
(LLAMA_CPP_SRC: vendor/llama.cpp of llama-cpp-python's source distribution)"""
import runpy
import sys

src, script = sys.argv[1], sys.argv[2]
sys.path.insert(0, src)
sys.path.insert(0, src + "/gguf-py")
import conversion.base as base  # noqa: E402  (llama.cpp's, from src)

for name in dir(base):
    cls = getattr(base, name)
    if isinstance(cls, type) and hasattr(cls, "get_vocab_base_pre"):
        cls.get_vocab_base_pre = lambda self, tokenizer: "deepseek-v3"
sys.argv = [script] + sys.argv[3:]
runpy.run_path(f"{src}/{script}", run_name="__main__")
