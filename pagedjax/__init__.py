"""pagedjax: vLLM-style PagedAttention inference in JAX.

    from pagedjax import LLM, SamplingParams
    llm = LLM("path/or/hub-id")
    outputs = llm.generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=32))
"""

from pagedjax._platform import prefer_cpu_without_gpu_driver

prefer_cpu_without_gpu_driver()  # before jax is imported

from pagedjax.llm import LLM  # noqa: E402
from pagedjax.outputs import BeamSearchOutput, BeamSequence, CompletionOutput, Logprob, RequestOutput  # noqa: E402
from pagedjax.sampling_params import BeamSearchParams, SamplingParams  # noqa: E402

__all__ = ["LLM", "SamplingParams", "BeamSearchParams", "RequestOutput", "CompletionOutput", "Logprob",
           "BeamSearchOutput", "BeamSequence"]
__version__ = "0.1.0"
