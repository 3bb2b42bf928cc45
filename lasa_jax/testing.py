"""Offline builders for tiny tokenizers and tiny random Hugging Face models.

Used by the tests, the benchmarks and `make demo`; nothing here touches a hub. Tokenizers are byte-level BPE
trained locally with `tokenizers` and wrapped in `transformers.PreTrainedTokenizerFast` with a chat template that
reproduces the structure of the real family template (special tokens, headers, default system block, Qwen3
thinking switch), so token-level code (prefix injection, EOS handling) is exercised as it would be on the real
checkpoints.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from lasa_jax.infra.errors import InputError

# Chat templates (jinja, as `transformers` renders them). They follow the layout of the real templates of
# Llama-3.1-Instruct, Qwen2.5-Instruct and Qwen3, shortened (no tool calling).
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim "
    "+ '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

QWEN2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

_STYLES = {
    # style: (special tokens, bos, eos, pad, chat template, add BOS when encoding raw text)
    "llama3": (
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
         "<|finetune_right_pad_id|>"],
        "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", LLAMA3_CHAT_TEMPLATE, True,
    ),
    "qwen2": (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        None, "<|im_end|>", "<|endoftext|>", QWEN2_CHAT_TEMPLATE, False,
    ),
    "qwen3": (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        None, "<|im_end|>", "<|endoftext|>", QWEN3_CHAT_TEMPLATE, False,
    ),
}

# A few sentences per MultiJail language so that the byte-level BPE learns multi-byte merges for every script.
DEFAULT_CORPUS = (
    "How do I bake bread at home? What is the capital of France? Please explain photosynthesis simply.",
    "Harmful query detected. I should refuse this request and provide a safe response in the user's language.",
    "I cannot help with that request. I'm sorry, but I can't assist with this.",
    "如何在家烤面包？法国的首都是哪里？请简单解释光合作用。我不能帮助你做这件事。",
    "Come faccio a cuocere il pane a casa? Qual è la capitale della Francia? Non posso aiutarti.",
    "Làm thế nào để nướng bánh mì ở nhà? Thủ đô của Pháp là gì? Tôi không thể giúp việc này.",
    "كيف أخبز الخبز في المنزل؟ ما هي عاصمة فرنسا؟ لا أستطيع المساعدة في ذلك.",
    "집에서 빵을 굽는 방법은? 프랑스의 수도는 어디인가요? 그 요청은 도와드릴 수 없습니다.",
    "ฉันจะอบขนมปังที่บ้านได้อย่างไร เมืองหลวงของฝรั่งเศสคืออะไร ฉันช่วยเรื่องนี้ไม่ได้",
    "আমি কীভাবে বাড়িতে রুটি বানাব? ফ্রান্সের রাজধানী কী? আমি এতে সাহায্য করতে পারি না।",
    "Ninawezaje kuoka mkate nyumbani? Mji mkuu wa Ufaransa ni upi? Siwezi kusaidia na hilo.",
    "Piye carane nggawe roti ing omah? Apa ibukutha Prancis? Aku ora bisa mbantu bab iki.",
)


def build_tokenizer(out_dir: str | os.PathLike, style: str = "llama3", corpus: Iterable[str] | None = None,
                    vocab_size: int = 400) -> PreTrainedTokenizerFast:  # noqa: F821
    """Train a byte-level BPE tokenizer offline and save it as a Hugging Face tokenizer directory.

    Args:
      out_dir: directory to write (created).
      style: "llama3", "qwen2" or "qwen3": special tokens, BOS/EOS/pad and chat template of that family.
      corpus: training texts; defaults to a short multilingual corpus (all ten MultiJail languages).
      vocab_size: target BPE size including special tokens and the 256 byte symbols.
    Returns the loaded `PreTrainedTokenizerFast`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style not in _STYLES:
        raise InputError(f"tokenizer style must be one of {sorted(_STYLES)}, got {style!r}")
    specials, bos, eos, pad, template, add_bos = _STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = list(corpus) if corpus is not None else list(DEFAULT_CORPUS)
    tok.train_from_iterator(texts * 3, trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    kwargs = dict(tokenizer_object=tok, eos_token=eos, pad_token=pad, chat_template=template)
    if bos is not None:
        kwargs["bos_token"] = bos
    hf_tok = PreTrainedTokenizerFast(**kwargs)
    os.makedirs(out_dir, exist_ok=True)
    hf_tok.save_pretrained(out_dir)
    return hf_tok


# Tiny configurations covering the features each family must get right (see tests/models/test_models.py).
TINY_CONFIGS = {
    # llama with llama3 rope scaling, GQA, untied, odd vocab
    "llama": dict(model_type="llama", vocab_size=517, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 32},
                  tie_word_embeddings=False),
    # qwen2 with q/k/v bias and tied embeddings
    "qwen2": dict(model_type="qwen2", vocab_size=411, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True),
    # qwen3 with q/k RMSNorm and head_dim != hidden / heads
    "qwen3": dict(model_type="qwen3", vocab_size=409, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-6,
                  max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                  tie_word_embeddings=False),
}

TOKENIZER_STYLE = {"llama": "llama3", "qwen2": "qwen2", "qwen3": "qwen3"}


def hf_config(family: str, **overrides):
    """A `transformers` config object for a tiny model of `family` ("llama", "qwen2", "qwen3")."""
    from transformers import AutoConfig

    if family not in TINY_CONFIGS:
        raise InputError(f"family must be one of {sorted(TINY_CONFIGS)}, got {family!r}")
    kwargs = dict(TINY_CONFIGS[family])
    kwargs.update(overrides)
    model_type = kwargs.pop("model_type")
    return AutoConfig.for_model(model_type, **kwargs)


def build_tiny_hf_model(out_dir: str | os.PathLike, family: str = "llama", seed: int = 0, dtype: str = "float32",
                        tokenizer: bool = True, corpus: Sequence[str] | None = None, max_shard_size: str | None = None,
                        **overrides):
    """Build a random tiny HF PyTorch model (torch needed: tests only) and `save_pretrained` it with safetensors.

    The tokenizer (if requested) is trained first so that its special-token ids are set in the model config.
    Returns the torch model (eval mode).
    """
    import torch
    from transformers import AutoModelForCausalLM

    os.makedirs(out_dir, exist_ok=True)
    tok_ids = {}
    if tokenizer:
        tok = build_tokenizer(out_dir, TOKENIZER_STYLE[family], corpus=corpus)
        tok_ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = hf_config(family, **{**tok_ids, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    # HF's default init (std 0.02, unit norms) gives near-uniform logits; widen it so that tests discriminate.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.5 / p.shape[-1] ** 0.5) * 2.0)
    model.eval()
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(out_dir, **kwargs)
    return model



# ----------------------------------------------------------------------------------------------- GGUF files
def write_gguf(hf_dir: str | os.PathLike, gguf_path: str | os.PathLike, tensor_type: str = "F32", *,
               architecture: str | None = None, extra_tensors: dict | None = None,
               raw_types: dict | None = None) -> None:
    """Write a tiny HF checkpoint directory as a GGUF file the way llama.cpp's converter lays it out.

    Uses the `gguf` package's `GGUFWriter` (no torch): llama.cpp metadata keys, its tensor names (gguf's tensor-name
    map), Llama q/k rows permuted to llama.cpp's rotary order, the tokenizer as a "gpt2" (byte-level BPE) vocabulary
    with its merges, special tokens, ids and chat template. Matrices are stored as `tensor_type` ("F32", "F16" or a
    type `gguf.quants.quantize` implements, e.g. "Q8_0", "Q4_1"); vectors (norms, biases) stay F32, as llama.cpp
    keeps them. Test hooks: `architecture` overrides general.architecture; `extra_tensors` {gguf name: float32 array}
    adds tensors; `raw_types` {gguf name: ggml type name} stores a matrix's bytes under another declared type
    (zero blocks of that type's size), to make files with types gguf cannot dequantise.
    """
    import json

    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    hf_dir = os.fspath(hf_dir)
    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    model_type = config["model_type"]
    arch_name = architecture or model_type
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer = gguf.GGUFWriter(os.fspath(gguf_path), arch_name)
    writer.add_name(f"tiny-{model_type}")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(config["rope_parameters"]["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    if model_type == "llama":
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(config["vocab_size"])
    if model_type == "qwen3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    _write_gguf_tokenizer(writer, hf_dir, config["vocab_size"])
    name_map = gguf.get_tensor_name_map(
        next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == model_type), config["num_hidden_layers"])
    qtype = gguf.GGMLQuantizationType[tensor_type]
    for hf_name, array in sorted(load_file(os.path.join(hf_dir, "model.safetensors")).items()):
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        base, suffix = hf_name.rsplit(".", 1)
        name = f"{name_map.get_name(base)}.{suffix}"
        array = array.astype(np.float32)
        if model_type == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            n = heads if "attn_q" in name else kv_heads
            array = array.reshape(n, 2, array.shape[0] // n // 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)
        _add_gguf_tensor(writer, name, array, qtype, (raw_types or {}).get(name))
    for name, array in (extra_tensors or {}).items():
        _add_gguf_tensor(writer, name, np.asarray(array, np.float32), gguf.GGMLQuantizationType.F32, None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_gguf_tensor(writer, name: str, array, qtype, raw_type: str | None) -> None:
    import gguf
    import numpy as np

    if raw_type is not None:
        declared = gguf.GGMLQuantizationType[raw_type]
        block, size = gguf.GGML_QUANT_SIZES[declared]
        raw = np.zeros((*array.shape[:-1], array.shape[-1] // block * size), np.uint8)
        writer.add_tensor(name, raw, raw_dtype=declared)
    elif array.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, array)
    else:
        writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)


def _write_gguf_tokenizer(writer, hf_dir: str, vocab_size: int) -> None:
    """The tokenizer of `hf_dir` (a byte-level BPE tokenizer.json) as llama.cpp's "gpt2" tokenizer metadata.

    As llama.cpp does, the token list is padded to the model's `vocab_size` with unused `[PAD<i>]` tokens.
    """
    import json

    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    with open(os.path.join(hf_dir, "tokenizer.json"), encoding="utf-8") as f:
        model = json.load(f)["model"]
    vocab = tok.get_vocab()
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    special = set(tok.all_special_tokens)
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    padding = [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens + padding)
    writer.add_token_types(types + [gguf.TokenType.UNUSED] * len(padding))
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    for kind in ("bos", "eos", "pad"):
        token_id = getattr(tok, f"{kind}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(tok.bos_token_id is not None)
    writer.add_chat_template(tok.chat_template)
