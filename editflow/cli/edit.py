"""``editflow erase`` / ``apply`` / ``export``: closed-form erasure as patches."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from editflow.cli.common import (
    MAX_IMAGES,
    MAX_SCALE,
    MAX_SEED,
    MAX_TRAIN_STEPS,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    NudityProtocolName,
    NudityProtocolOpt,
    OffloadOpt,
    bar,
    check_out,
    cli_errors,
    drawing,
    dtype_name,
    err,
    finite,
    placement,
    quiet_libraries,
    save_image,
)
from editflow.errors import EditflowError


class MethodName(str, Enum):
    ace = "ace"
    uce = "uce"
    esd_x = "esd-x"
    esd_u = "esd-u"


class Finetune(str, Enum):
    auto = "auto"
    none = "none"
    fmn = "fmn"
    adv = "adv"
    minmax = "minmax"
    implied = "implied"


class Policy(str, Enum):
    last = "last"
    through_pad = "through_pad"


class Target(str, Enum):
    anchor = "anchor"
    empty = "empty"
    fallback = "fallback"
    zero = "zero"


class Fmt(str, Enum):
    lora = "lora"
    kohya = "kohya"


class Mode(str, Enum):
    auto = "auto"
    merge = "merge"
    gated = "gated"


def _read_concepts(concepts: list[str], concepts_file: Path | None) -> list[str]:
    words = list(concepts)
    if concepts_file is not None:
        if not concepts_file.is_file():
            raise EditflowError(f"concepts file not found: {concepts_file}")
        words += [ln.strip() for ln in concepts_file.read_text().splitlines()
                  if ln.strip() and not ln.lstrip().startswith("#")]
    if not words:
        raise EditflowError("name at least one concept (--concept or --concepts-file)")
    seen: dict[str, str] = {}
    for w in words:
        key = " ".join(w.split()).casefold()
        if key in seen:
            raise EditflowError(f"concept {w!r} is named twice (as {seen[key]!r} too); name each concept once")
        seen[key] = w
    return words


def slug(words: list[str]) -> str:
    """Concept words as one file- and model-name-safe word: ``["naked"]`` -> ``naked``,
    ``["<mine>", "a b"]`` -> ``mine-a_b``."""
    parts = [re.sub(r"[^A-Za-z0-9._]+", "_", w.strip()).strip("._") or "concept" for w in words]
    return "-".join(parts)[:100]


def default_out(words: list[str]) -> Path:
    """Where ``erase`` writes its patch when ``--out`` is not given: ``<concepts>.safetensors`` here."""
    return Path(f"{slug(words)}.safetensors")


def register(app: typer.Typer) -> None:
    app.command()(erase)
    app.command("apply")(apply_patch)
    app.command("export")(export)


# erase's options that set a field of one method's config (or of one fine-tuning mode): given to a
# method (mode) without that field, they are refused rather than ignored
METHOD_OPTIONS = {"lam": "--lam", "preserve_scale": "--preserve-scale", "target": "--target",
                  "gated": "--gated/--no-gated", "guidance": "--guidance", "rank_energy": "--rank-energy"}
MODE_OPTIONS = {"rounds": ("--rounds", ("adv",))}


def given_options(ctx: typer.Context, names) -> list[str]:
    """The parameters among ``names`` the user set (on the command line or through the environment)."""
    sources = {n: ctx.get_parameter_source(n) for n in names}
    return [n for n, src in sources.items() if src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")]


def refuse_foreign_options(ctx: typer.Context, method: str, finetune: str) -> None:
    """A one-line error for an option the chosen method (or fine-tuning mode) has no use for."""
    from editflow.edits import get_method

    own = {f.name for f in fields(get_method(method).config_class)}
    for name in given_options(ctx, METHOD_OPTIONS):
        if name not in own:
            raise EditflowError(f"{METHOD_OPTIONS[name]} is not an option of --method {method}")
    for name in given_options(ctx, MODE_OPTIONS):
        flag, modes = MODE_OPTIONS[name]
        if finetune not in modes:
            raise EditflowError(f"{flag} is an option of --finetune {'/'.join(modes)}, not of --finetune {finetune}")


@cli_errors
def erase(
    ctx: typer.Context,
    concept: Annotated[list[str], typer.Option("--concept", "-c", help="Concept to erase (repeatable).")] = [],  # noqa: B006
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Patch file to write (.safetensors). Default: <concepts>.safetensors in the "
                            "working directory (the flow's report goes next to it, <concepts>-eval/).")] = None,
    concepts_file: Annotated[Path | None, typer.Option(help="File with one concept per line.")] = None,
    method: Annotated[MethodName, typer.Option(case_sensitive=False, help="Erasure method.")] = MethodName.ace,
    anchor: Annotated[str | None, typer.Option(
        help="What the concept should become (default: the family's neutral word on the embedded model, "
             "'' otherwise).")] = None,
    preserve: Annotated[list[str], typer.Option(
        "--preserve", "-p", help="Concept to keep (repeatable). Default on the embedded model: same-family "
                                 "neighbours, then the world's other objects, styles and identities.")] = [],  # noqa: B006
    alias: Annotated[list[str], typer.Option(help="Extra word/paraphrase naming the concept (repeatable).")] = [],  # noqa: B006
    synonyms: Annotated[bool, typer.Option(help="Also erase the world's synonyms of each concept.")] = True,
    token_policy: Annotated[Policy, typer.Option(
        help="Token positions that stand for the concept.")] = Policy.through_pad,
    lam: Annotated[float, typer.Option(
        min=1e-9, callback=finite, help="λ: weight of staying close to the original weights.")] = 0.5,
    preserve_scale: Annotated[float, typer.Option(
        min=0.0, callback=finite, help="s_p: weight of the preserved concepts.")] = 1.0,
    target: Annotated[Target, typer.Option(help="ACE neutral target.")] = Target.anchor,
    gated: Annotated[bool, typer.Option(help="ACE: apply the edit through the concept gate.")] = True,
    guidance: Annotated[float, typer.Option(
        min=0.0, callback=finite,
        help="ACE η: push targets past the neutral point, away from the concept (0 = align).")] = 1.0,
    rank_energy: Annotated[float, typer.Option(
        min=1e-6, max=1.0, callback=finite,
        help="ACE: keep the fewest edit directions holding this share of energy.")] = 0.999,
    cache_dir: Annotated[Path | None, typer.Option(
        envvar="EDITFLOW_CACHE", help="Where preserve statistics are cached per base model "
                                      "(default: ~/.cache/editflow).")] = None,
    cache: Annotated[bool, typer.Option(help="Reuse/cache the preserve statistics.")] = True,
    model: ModelOpt = None,
    patch_only: Annotated[bool, typer.Option(
        "--patch-only", help="Only write the patch (no evaluation, no registry) and print a quick before/after "
                             "detection (embedded model).")] = False,
    family: Annotated[str | None, typer.Option(
        help="Real models: the concept's family (nudity, style, object, identity): its anchor, the words erased "
             "with it, its prompt set and judge. Default: nudity for nudity's words, else object.")] = None,
    evaluator: Annotated[str | None, typer.Option(
        help="Real models, flow: the open_clip judge: a folder, NAME:WEIGHTS or NAME:TAG from the Hugging Face "
             "cache (default ViT-L-14:openai).")] = None,
    nudity_protocol: NudityProtocolOpt = NudityProtocolName.i2p,
    allow_download: Annotated[bool, typer.Option(
        help="Real models: let a hub id, and the judge's pretrained tag, be fetched from the hub.")] = False,
    check: Annotated[bool, typer.Option(help="--patch-only: print before/after detection (embedded model).")] = True,
    check_images: Annotated[int, typer.Option(min=1, max=MAX_IMAGES, help="Images per concept for --check.")] = 12,
    register: Annotated[str | None, typer.Option(
        help="Registered model name for the flow (default: erase-<concepts>, e.g. erase-naked).")] = None,
    gates: Annotated[Path | None, typer.Option(help="Flow: gate thresholds (YAML).")] = None,
    eval_images: Annotated[int, typer.Option(min=2, max=MAX_IMAGES, help="Flow: images per erased concept.")] = 24,
    dask_address: Annotated[str | None, typer.Option(
        help="Flow: spread the evaluation's generation over this Dask scheduler (tcp://host:8786).")] = None,
    finetune: Annotated[Finetune, typer.Option(
        case_sensitive=False, help="Gradient stage after the closed form: auto (implied when the concept has "
                                   "implied prompts, as nudity on the embedded model, else none), implied (a LoRA "
                                   "trained so prompts that imply the concept, 'a person at the beach', draw "
                                   "the anchor), fmn (Forget-Me-Not losses on the patch's factors), adv "
                                   "(adversarial embeddings join the erase set, then the FMN steps), minmax (a "
                                   "LoRA trained against three persistent inversion attackers: minutes per "
                                   "concept), none.")
    ] = Finetune.auto,
    steps: Annotated[int | None, typer.Option(
        min=0, max=MAX_TRAIN_STEPS,
        help="Gradient steps: of --finetune fmn/adv on the patch's factors (default 50), of --finetune "
             "minmax's defender (default 900), of --finetune implied/auto's LoRA (default 300), or of --method "
             "esd-x/esd-u's training (default 200).")] = None,
    rounds: Annotated[int, typer.Option(min=0, max=1_000, help="--finetune adv: adversarial search rounds.")] = 6,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of the fine-tuning and inversion.")] = 0,
    images: Annotated[Path | None, typer.Option(
        help="Folder with images of the concept: inverted into a token that joins the concept's words. "
             "Without --concept, the concept is that token alone (name it with --token).")] = None,
    token: Annotated[str | None, typer.Option(
        help="Name of the token learned from --images (default <CONCEPT-images>).")] = None,
    attack_steps: Annotated[int, typer.Option(
        min=1, max=MAX_TRAIN_STEPS, help="Flow: gradient steps of the evaluation's concept-inversion attack.")] = 150,
    attack_restarts: Annotated[int, typer.Option(
        min=1, max=100, help="Flow: attack tries per concept; the best one counts.")] = 3,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offload: OffloadOpt = False,
):
    """Erase concepts and ship the patch: the flow erase -> evaluate -> gates -> register (Prefect, MLflow).

    The patch is written to --out (default ./<concepts>.safetensors), judged against the gates
    (report next to it, <concepts>-eval/) and, if it passes, registered as a new version of
    --register (default erase-<concepts>, alias candidate); exit 3 when a gate fails. --patch-only
    just writes the patch (seconds).

    On a real checkpoint (--model) the concept's family (--family, guessed for nudity) gives its
    anchor and the words erased with it; the shipped prompt sets (configs/prompts/) and judges
    (NudeNet for nudity, the open_clip --evaluator, ViT-L-14:openai from the Hugging Face cache by
    default) evaluate it. With no judge it stops before any work, saying how to supply one.

    Methods: ace (default; gated closed form), uce (closed form), esd-x / esd-u (fine-tuning baselines).
    --finetune auto (default) adds the implied stage when the concept has implied prompts (nudity: "a
    person at the beach" trained to draw what "a clothed person at the beach" draws), else nothing;
    fmn|adv add a short gradient stage on the patch's own factors (the base stays frozen); minmax
    trains a LoRA over the ungated closed form against a concept-inversion attacker. --images DIR
    learns a token from pictures of the concept (textual inversion) and erases it with its words.
    """
    from editflow.jobs.erase import (
        EraseJob,
        build_request,
        finetune_config,
        method_config,
        prompt_count,
        run_erase,
    )
    from editflow.models.tokens import check_token_name

    refuse_foreign_options(ctx, method.value, finetune.value)
    # the flow's tasks on a Dask cluster resolve the device where they run; otherwise resolve it here, first
    if dask_address and not patch_only:
        place = None
        quiet_libraries()
    else:  # the flow imports the model libraries (and quiets them) while Prefect's server starts
        place = placement(device, dtype, offload, quiet=patch_only)
    if token is not None:
        check_token_name(token, "--token")
    if images is not None and not concept and not concepts_file:
        if not token:
            raise EditflowError("--images without --concept needs --token to name the concept (e.g. '<mine>')")
        if not patch_only:
            raise EditflowError("a concept given only by images has no detector for the gates: label it with "
                                "--concept, or write just the patch with --patch-only")
        if not (token.startswith("<") and token.endswith(">")):
            raise EditflowError(f"--token {token!r}: write learned tokens in angle brackets, e.g. '<mine>'")
        concept = [token]
    words = _read_concepts(concept, concepts_file)
    defaulted = out is None
    out = default_out(words) if out is None else out
    check_out(out)
    if not patch_only:  # the flow writes its report next to the patch
        check_out(out.with_name(out.stem + "-eval"), "--out (report folder)", kind="dir")
    options = {"lam": lam, "preserve_scale": preserve_scale, "target": target.value, "gated": gated,
               "guidance": guidance, "rank_energy": rank_energy, "seed": seed}
    esd = method in (MethodName.esd_x, MethodName.esd_u)
    tuning = {"mode": finetune.value, "rounds": rounds, "seed": seed}
    if steps is not None:  # the method's training (ESD) or the fine-tuning stage; each has its default
        from editflow.finetune.config import STEPS_FIELD, FinetuneMode

        key = "esd_steps" if esd else STEPS_FIELD.get(FinetuneMode(finetune.value), "steps")
        (options if esd else tuning)[key] = steps
    job = EraseJob(words, method.value, model=model, anchor=anchor, preserve=list(preserve), aliases=list(alias),
                   synonyms=synonyms, token_policy=token_policy.value, options=options,
                   cache_dir=str(cache_dir or Path.home() / ".cache" / "editflow") if cache else None,
                   finetune=tuning, images=str(images) if images is not None else None, image_token=token,
                   device=device, dtype=dtype_name(dtype), offload=offload, family=family,
                   allow_download=allow_download)
    job.validate()
    if not patch_only:
        from editflow.evaluation.gates import Gates
        from editflow.plugins import run_flow

        Gates.load(gates)  # read and check the gates before the first stage, not after the erase
        eval_options = {"attack_steps": attack_steps, "attack_restarts": attack_restarts}
        if model is not None:  # a real model is judged by the real-model suite: find its judge first
            from editflow.jobs.evaluate import check_judge

            check_judge(evaluator, allow_download)
            eval_options.update(evaluator=evaluator, family=family, nudity_protocol=nudity_protocol.value,
                                allow_download=allow_download)
        register = register or "erase-" + slug(words)
        if defaulted:  # the input is sound: say where the work goes
            err.print(f"writing the patch to {out}", highlight=False)
        result = run_flow("erase", job=job, out=str(out), name=register, gates=str(gates) if gates else None,
                          images=eval_images, dask_address=dask_address, eval_options=eval_options)
        typer.echo(json.dumps(result, indent=2))
        if not result["passed"]:
            raise typer.Exit(3)
        return
    from editflow.models.pipeline import load_pipeline

    if defaulted:
        err.print(f"writing the patch to {out}", highlight=False)
    pipe = load_pipeline(model, device=place.device, dtype=place.dtype, offload=offload,
                         allow_download=allow_download)
    req = build_request(job)
    b = (bar(method_config(job.method, job.options).esd_steps, f"{method.value}: train") if esd
         else bar(prompt_count(req), f"{method.value}: encode"))
    plan = finetune_config(job, req, pipe)
    ft = bar(plan.progress_total(), "fine-tune")

    def tuned(event: str, info: dict) -> None:
        ft.update(1)
        ft.set_postfix({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in info.items()
                        if k in ("loss", "rank", "search")}, refresh=False)

    patch, req = run_erase(job, pipe, progress=b.update, request=req, finetune_progress=tuned)
    b.close()
    ft.close()
    path = patch.save(out)
    summary = {"patch": str(path), "method": method.value, "concepts": [c.name for c in req.concepts],
               "rank": patch.edit.rank, "gated": patch.gate is not None, "seconds": patch.metadata["seconds"]}
    if "finetune" in patch.metadata:
        summary["finetune"] = {"mode": plan.mode.value, "losses": patch.metadata["finetune"]["losses"],
                               "adversarial": len(patch.metadata["finetune"]["adversarial"])}
    if job.images_only:
        check = False  # the world's detector has no class for a token
    if check and model is None:
        summary["detection"] = _before_after(pipe, patch, [c.name for c in req.concepts], req.preserve, check_images,
                                             place.device)
    typer.echo(json.dumps(summary, indent=2))


def _before_after(pipe, patch, erased: list[str], kept: list[str], n: int, device) -> dict:
    from editflow.jobs.quick_check import before_after

    table = before_after(pipe, patch, erased, kept, n, device, progress_factory=bar)
    for c, row in table.items():
        kind = "erase" if row["erased"] else "keep"
        err.print(f"{kind:5s} {c:10s} detected {row['before']:.2f} -> {row['after']:.2f}", highlight=False)
    return table


@cli_errors
def apply_patch(
    patch: Annotated[Path, typer.Option("--patch", help="Patch file (.safetensors).")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Prompt to generate with the patched model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Grid to write: original row, then patched row.")],
    model: ModelOpt = None,
    n: Annotated[int, typer.Option("--n", min=1, max=MAX_IMAGES, help="Images per row.")] = 8,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of the first image.")] = 0,
    mode: Annotated[Mode, typer.Option(
        case_sensitive=False, help="auto (gated if the patch has a gate), merge or gated.")] = Mode.auto,
    scale: Annotated[int, typer.Option(min=1, max=MAX_SCALE, help="Upscale factor of the grid (nearest).")] = 1,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offload: OffloadOpt = False,
):
    """Apply a patch to a model and write original vs patched images (same seeds)."""
    from editflow.edits import Patch
    from editflow.models.pipeline import generate, load_pipeline, make_grid

    place = drawing(prompt, out, device, dtype, offload)
    p = Patch.load(patch)
    pipe = load_pipeline(model, device=place.device, dtype=place.dtype, offload=offload)
    seeds = [seed + i for i in range(n)]
    p.check(pipe.unet, mode.value)  # a patch that does not fit this model fails before anything is drawn
    before = generate(pipe, [prompt] * n, seeds)
    with p.apply(pipe, mode=mode.value):
        after = generate(pipe, [prompt] * n, seeds)
    save_image(make_grid(before + after, n, scale), out)
    typer.echo(str(out))


@cli_errors
def export(
    patch: Annotated[Path, typer.Option("--patch", help="Patch file (.safetensors).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder (lora) or .safetensors file (kohya).")],
    fmt: Annotated[Fmt, typer.Option("--format", help="lora (diffusers/peft keys) or kohya (A1111).")] = Fmt.lora,
):
    """Export a patch's (ungated) edit as a LoRA that diffusers, kohya and A1111 load."""
    from editflow.edits import Patch
    from editflow.edits.export import export_lora

    check_out(out, kind="file" if fmt is Fmt.kohya or out.suffix == ".safetensors" else "dir")
    p = Patch.load(patch)
    if p.gate is not None:
        err.print("note: the gate has no LoRA form; exporting the ungated edit", highlight=False)
    typer.echo(str(export_lora(p, out, fmt.value)))
