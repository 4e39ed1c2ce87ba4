from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class FinetuneMode(str, Enum):
    auto = "auto"  # implied when the request has implied prompts (and a closed form to start from), else none
    none = "none"  # the closed-form patch as it is
    fmn = "fmn"  # Forget-Me-Not losses on the patch's factors
    adv = "adv"  # adversarial rounds (inverted / PGD embeddings join the erase set), then the FMN steps
    minmax = "minmax"  # LoRA over the ungated closed form, trained against persistent inversion attackers
    implied = "implied"  # LoRA over the ungated closed form: prompts that imply the concept draw the anchor


# the field holding each mode's gradient steps (``--steps``); auto's stage, when it runs one, is implied
STEPS_FIELD = {FinetuneMode.auto: "implied_steps", FinetuneMode.fmn: "steps", FinetuneMode.adv: "steps",
               FinetuneMode.minmax: "minmax_steps", FinetuneMode.implied: "implied_steps"}

DEFAULT_KEEP_TEMPLATES = ("{}", "a {}")  # minmax: preserved images of words the request has no prompts for


@dataclass
class FinetuneConfig:
    """The short gradient stage after a closed-form erasure; trains only the patch's factors.

    Defaults measured on the embedded world (docs/benchmarks.md, "Fine-tuning and attacks").
    """

    mode: FinetuneMode = field(default=FinetuneMode.auto, metadata={"help": "auto, none, fmn, adv, minmax or implied"})
    steps: int = field(default=50, metadata={"help": "gradient steps on the patch's factors (FMN losses)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of the factors (1e-3 undid the erasure)"})
    batch: int = field(default=4, metadata={"help": "erase prompts per step (and as many preserve prompts)"})
    resteer_weight: float = field(default=1.0, metadata={"help": "FMN attention re-steering loss weight"})
    denoise_weight: float = field(default=1.0, metadata={"help": "FMN visual denoising loss weight"})
    preserve_weight: float = field(default=1.0, metadata={
        "help": "keep preserved prompts' predictions equal to the base model's"})
    extra_rank: int = field(default=4, metadata={"help": "new directions the factors may grow (zero-initialised)"})
    fallbacks: int = field(default=16, metadata={"help": "natural-fallback images (concept attention zeroed)"})
    rounds: int = field(default=6, metadata={"help": "adv: adversarial search rounds"})
    attack_steps: int = field(default=150, metadata={"help": "adv: gradient steps per adversarial embedding"})
    attack_lr: float = field(default=0.02, metadata={"help": "adv: learning rate of the adversarial embedding"})
    pgd_radius: float = field(default=2.0, metadata={
        "help": "adv: PGD ball radius around the concept word's embedding, in units of its norm"})
    references: int = field(default=16, metadata={"help": "concept images the base model draws when none given"})
    scene_references: bool = field(default=False, metadata={
        "help": "minmax: draw those images from the request's described scenes of the concept (on the embedded "
                "world 'a blue heart by {}' for a style, every colour in turn), else its scene templates, instead "
                "of its own prompts for the concept ('a shape by {}'); the embedded world's default for a style, "
                "with 32 references"})
    scene_words: float = field(default=0.0, metadata={
        "help": "minmax: share of the defender's prompts for the concept's words taken from the request's contexts "
                "of it (its scene templates and described scenes: 'a blue ball in the style of {}'), each against "
                "the guided target there, instead of the attack's plain templates; the embedded world's default "
                "for a style: 0.5"})
    minmax_steps: int = field(default=900, metadata={"help": "minmax: defender steps (each after attacker_steps)"})
    minmax_lr: float = field(default=1e-3, metadata={"help": "minmax: Adam learning rate of the LoRA"})
    lr_final: float = field(default=0.1, metadata={
        "help": "minmax: the LoRA's learning rate at the last step, as a share of minmax_lr (cosine decay; 1: "
                "constant). With eta 1, 0.1 met the attack/erasure/specificity goal on an object and an identity "
                "over three seeds (docs/experiments/2026-11-23-finetune-rounds.md, eighth round)"})
    lora_rank: int = field(default=8, metadata={"help": "minmax: LoRA rank per key/value projection"})
    eta: float = field(default=1.0, metadata={
        "help": "minmax: negative guidance of the target, ε(anchor) − η (ε(concept) − ε(anchor)) (ESD eq. 3); "
                "2 cost the other families' pictures (specificity 0.95 on an identity, eighth round)"})
    attacker_steps: int = field(default=4, metadata={"help": "minmax: attacker inversion steps per defender step"})
    restart: int = field(default=0, metadata={
        "help": "minmax: defender steps before the attacker starts afresh; 0: never, one persistent attacker "
                "(restarting every 40 lost to a 400-step attack: docs/experiments/2026-11-23-finetune-rounds.md, "
                "fourth round)"})
    attackers: int = field(default=3, metadata={
        "help": "minmax: persistent attackers per concept (starts alternate the anchor word and the mean "
                "embedding); they take turns, the defender answers all of them (3 lowered the 400-step "
                "attack in every paired run against 1: docs/experiments/2026-11-23-finetune-rounds.md, fifth round); "
                "the embedded world's "
                "default for a style: 5"})
    replay: int = field(default=2, metadata={"help": "minmax: past attackers replayed in each defender step"})
    minmax_preserve: float = field(default=4.0, metadata={
        "help": "minmax: weight of keeping preserved concepts' predictions (12: specificity up, robustness down)"})
    keep_images: int = field(default=2, metadata={"help": "minmax: images the base model draws per preserved concept"})
    neighbour_images: int = field(default=0, metadata={
        "help": "minmax: images the base model draws of each same-family neighbour the request names, from its "
                "scene templates (0: neighbours are drawn like any preserved concept, keep_images each); the "
                "embedded world's default for a style: 16"})
    keep_templates: tuple[str, ...] | None = field(default=None, metadata={
        "help": "minmax: prompt templates of the preserved concepts' images; default: the request's own prompts "
                "for each (on the embedded world, per family: 'a shape by {}' for a style), else '{}', 'a {}' "
                "(the scene contexts or the attack's 'a photo of a {}' cost robustness: docs/benchmarks.md)"})
    preserve_focus: float = field(default=0.0, metadata={
        "help": "minmax: share of preserved images drawn in proportion to their running error (0: uniform)"})
    implied_steps: int = field(default=300, metadata={"help": "implied: LoRA steps"})
    implied_lr: float = field(default=3e-3, metadata={"help": "implied: Adam learning rate of the LoRA"})
    implied_images: int = field(default=4, metadata={
        "help": "implied: pictures the base model draws of each anchored prompt ('a clothed person at the beach')"})
    implied_preserve: float = field(default=1.0, metadata={
        "help": "implied: weight of keeping the kept prompts' predictions"})
    seed: int = 0

    def progress_total(self) -> int:
        """Progress events the stage reports: its steps, and adv's search rounds before them (none when
        the mode runs nothing; ``auto`` must be decided first)."""
        if self.mode in (FinetuneMode.none, FinetuneMode.auto):
            return 0
        return getattr(self, STEPS_FIELD[self.mode]) + (self.rounds if self.mode is FinetuneMode.adv else 0)

    def __post_init__(self):
        self.mode = FinetuneMode(self.mode)
        for name in ("steps", "extra_rank", "rounds", "minmax_steps", "replay", "restart", "neighbour_images",
                     "implied_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("batch", "attack_steps", "references", "fallbacks", "lora_rank", "attacker_steps", "keep_images",
                     "attackers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if min(self.lr, self.attack_lr, self.pgd_radius, self.minmax_lr, self.implied_lr) <= 0:
            raise ValueError("lr, attack_lr, pgd_radius, minmax_lr and implied_lr must be > 0")
        if min(self.eta, self.minmax_preserve, self.implied_preserve) < 0:
            raise ValueError("eta, minmax_preserve and implied_preserve must be >= 0")
        if self.keep_templates is not None:
            self.keep_templates = tuple(self.keep_templates)
            if not self.keep_templates or any(t.count("{}") != 1 for t in self.keep_templates):
                raise ValueError("keep_templates: each needs exactly one '{}' for the concept")
        if not 0 <= self.lr_final <= 1:
            raise ValueError("lr_final must be between 0 and 1")
        for name in ("preserve_focus", "scene_words"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
