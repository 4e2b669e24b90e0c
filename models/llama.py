"""LlamaForCausalLM (Llama 2, 3, 3.1, 3.2): GQA, explicit head_dim, tied or untied embeddings,
rope scaling default / linear / dynamic / llama3. `attention_bias` puts a bias on q, k, v and o."""

ARCHITECTURE = "LlamaForCausalLM"


def flags(hf: dict) -> dict:
    bias = bool(hf.get("attention_bias", False))
    return dict(qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)))
