"""The ``attnlab`` command (also ``python -m attnlab``).

    attnlab demo                      the main job: EA vs DPA side by side, then both studies (quick)
    attnlab study NAME [...]          a registered study (value-aware, ladder): --preset, --device,
                                      --resume, --jobs (attnlab.studies.launcher)
    attnlab approx-error [...]        approximation error of any methods over r, synthetic or captured
    attnlab train CONFIG.yaml [...]   train a model
    attnlab build-cpp                 compile the 'cpp' backend's CPU kernels now (else on first use)

``train``, ``approx-error`` and ``study NAME`` hand the rest of the command line, options in any
order, to their own parser (``attnlab train --help``). Each subcommand imports what it needs
when it runs, and ``import attnlab`` loads its modules on first use, so ``attnlab --help``
imports no torch and stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._argparse import ArgumentParser

__all__ = ["build_parser", "main"]


def _studies() -> dict[str, str]:
    """The studies (``configs/studies/<name>/`` + ``attnlab/studies/<name>.py``) and the first
    paragraph of each module's docstring, read without importing anything heavy."""
    from .studies.base import available_studies, study_description

    return {name: study_description(name) for name in available_studies()}


def _demo(args: argparse.Namespace) -> int:
    """A short side-by-side of dot-product attention (DPA) and expressive attention (EA)."""
    import torch

    import attnlab

    torch.manual_seed(args.seed)
    print(f"attnlab {attnlab.__version__} demo: DPA (softmax) vs EA (expressive) on random inputs")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")

    # 1. What EA changes: the weight of a key as a function of its angle to the query.
    q = torch.tensor([[4.0, 0.0]])
    angles = [0, 45, 90, 135, 180]
    keys = torch.tensor([[4 * torch.cos(torch.deg2rad(torch.tensor(a, dtype=torch.float))).item(),
                          4 * torch.sin(torch.deg2rad(torch.tensor(a, dtype=torch.float))).item()] for a in angles])
    rows = []
    for kernel in ("softmax", "expressive"):
        _, w = attnlab.attention(q, keys, keys, kernel=kernel, return_weights=True)
        rows.append((kernel, w[0].tolist()))
    print("weight of a key at angle (deg) to the query, |q| = |k| = 4:")
    print(f"  {'kernel':<11}" + "".join(f"{a:>8}" for a in angles))
    for kernel, w in rows:
        print(f"  {kernel:<11}" + "".join(f"{x:8.3f}" for x in w))
    print("  EA weighs parallel and antiparallel keys alike and ignores orthogonal ones.\n")

    # 2. Cost: forward and forward+backward time at a fixed number of tokens.
    ea_label = "EA " + _auto_backend_name("expressive")
    print(f"time (best of {args.repeats}), H=8, D=64, {args.tokens} tokens per batch, causal:")
    print(f"  {'L':>6} {'DPA sdpa':>10} {ea_label:>11} {'ratio':>6} {'DPA f+b':>9} {'EA f+b':>9} {'ratio':>6}")
    for L in args.lengths:
        B = max(1, args.tokens // L)
        q, k, v = (torch.randn(B, 8, L, 64, requires_grad=True) for _ in range(3))
        fwd, fb = {}, {}
        for kernel in ("softmax", "expressive"):
            fwd[kernel], fb[kernel] = _time_attention(q, k, v, kernel, args.repeats)
        print(f"  {L:>6} {fwd['softmax'] * 1e3:>8.1f}ms {fwd['expressive'] * 1e3:>9.1f}ms "
              f"{fwd['expressive'] / fwd['softmax']:>5.2f}x {fb['softmax'] * 1e3:>7.1f}ms "
              f"{fb['expressive'] * 1e3:>7.1f}ms {fb['expressive'] / fb['softmax']:>5.2f}x")
    print("\nratio = EA time / DPA time (below 1: EA is faster). Full sweep: benchmarks/attention.py")
    if args.side_by_side_only:
        return 0

    from attnlab.studies.launcher import run_study

    reports = []
    for title, study in (("Study 1: value-aware vs value-oblivious approximation", "value-aware"),
                         ("Study 2: EA vs DPA on the complexity ladder", "ladder")):
        print(f"\n== {title} (preset {args.preset}) ==", flush=True)
        path = run_study(study, args.preset, out=args.out, device=args.device, overrides={"seed": args.seed})
        reports.append(path / "report.md")
    print("\nreports:")
    for path in reports:
        print(f"  {path}")
    return 0


def _auto_backend_name(kernel: str) -> str:
    """The backend ``auto`` runs for ``kernel`` on float32 CPU inputs."""
    import torch

    import attnlab
    from attnlab.backends import resolve_backend
    from attnlab.functional import canonicalize

    q = torch.zeros(1, 1, 1, 8)
    problem, _ = canonicalize(q, q, q, None, True, None, False, 1e-6, attnlab.get_kernel(kernel))
    return resolve_backend(problem.kernel, problem=problem).name


def _build_cpp(args: argparse.Namespace) -> int:
    from attnlab.backends import cpp

    error = cpp.build_error()
    if error is not None:
        print(f"attnlab: {error}", file=sys.stderr)
        return 1
    print(f"backend 'cpp' is built: {cpp.library_path()}")
    return 0


def _time_attention(q, k, v, kernel: str, repeats: int) -> tuple[float, float]:
    """(forward, forward+backward) best times of causal attention under ``kernel``."""
    import torch

    import attnlab
    from attnlab.profiling import time_call

    def run():
        return attnlab.attention(q, k, v, kernel=kernel, is_causal=True)

    with torch.no_grad():
        forward = time_call(run, repeats=repeats)
    return forward, time_call(lambda: run().sum().backward(), repeats=repeats)


def _delegate(command: str, rest: list[str]) -> int:
    """Run ``train``, ``approx-error`` or ``study NAME`` with its own parser on ``rest``."""
    if command == "train":
        from .train import main as run
    elif command == "approx-error":
        from .studies.approx_error import main as run
    else:
        from .studies.launcher import main as launch

        return int(launch(command, rest) or 0)
    return int(run(rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``attnlab``: every subcommand for ``--help``; ``demo`` and ``build-cpp``'s
    options (the others parse their own, see :func:`main`)."""
    parser = ArgumentParser(prog="attnlab", description="The attnlab command (also: python -m attnlab).",
                            epilog="'attnlab COMMAND --help' shows the options of each command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="DPA vs EA side by side on random inputs, then both studies (quick)")
    demo.add_argument("--lengths", type=int, nargs="+", default=[256, 1024], help="sequence lengths")
    demo.add_argument("--tokens", type=int, default=4096, help="batch size x length")
    demo.add_argument("--repeats", type=int, default=3, help="timed runs per case (best is shown)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--preset", default="quick", choices=["tiny", "quick", "paper"], help="studies' preset")
    demo.add_argument("--device", default="cpu", help="the studies' device: cpu, cuda or cuda:N")
    demo.add_argument("--out", default="reports", help="folder for the study reports")
    demo.add_argument("--side-by-side-only", action="store_true", help="skip the studies")
    demo.set_defaults(func=_demo)
    sub.add_parser("train", help="train a model from a YAML config (attnlab train --help)", add_help=False)
    sub.add_parser("approx-error", help="approximation error of methods over r (attnlab approx-error --help)",
                   add_help=False)
    build = sub.add_parser("build-cpp", help="compile the 'cpp' backend's C++ CPU kernels now")
    build.set_defaults(func=_build_cpp)
    known = _studies()
    studies = "\n".join(f"  {name:<13}{text}" for name, text in known.items())  # unwrapped: whole phrases
    study = sub.add_parser("study", help="run a study: " + " or ".join(known),
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description=f"Run a study; 'attnlab study NAME --help' shows its options.\n\n"
                                       f"studies:\n{studies}")
    study.add_argument("name", choices=list(known), help="the study")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``attnlab COMMAND ...``; returns the exit code (2: a usage error, one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["train"], ["approx-error"]):
        return _delegate(argv[0], argv[1:])
    if argv[:1] == ["study"] and argv[1:2] and argv[1] in _studies():
        return _delegate(argv[1], argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)  # --help, demo, build-cpp, and `study` without a known name
    if args.command == "study":
        parser.error("study: give the study's name first, then its options")
    for name in ("lengths", "tokens", "repeats"):
        values = getattr(args, name, None)
        values = values if isinstance(values, list) else [values]
        if any(v is not None and v < 1 for v in values):
            print(f"attnlab {args.command}: error: --{name} must be >= 1", file=sys.stderr)
            return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
