"""pagedjax: vLLM-style PagedAttention inference in JAX.

    from pagedjax import LLM, SamplingParams
    llm = LLM("path/or/hub-id")
    outputs = llm.generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=32))
"""

from pagedjax.llm import LLM
from pagedjax.outputs import BeamSearchOutput, BeamSequence, CompletionOutput, Logprob, RequestOutput
from pagedjax.sampling_params import BeamSearchParams, SamplingParams

__all__ = ["LLM", "SamplingParams", "BeamSearchParams", "RequestOutput", "CompletionOutput", "Logprob",
           "BeamSearchOutput", "BeamSequence"]
__version__ = "0.1.0"
