"""Config dataclasses (STYLE.md habit 5): the base every task's config shares, and the run fields.

Precedence: dataclass defaults < a YAML file (`--config`) < command-line flags. The CLI records
which fields were given (`mark_given`), because a resumed run applies only those to its saved
config; a config built in Python counts the fields that differ from their defaults as given.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar

from cnnkit.utils import CnnkitError, suggest


def config_field(default, help: str, choices: tuple | None = None):  # noqa: A002
    """A dataclass field with a default and the help text its generated CLI flag shows."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": help, "choices": choices})


def default_of(f) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class ConfigBase:
    """What every cnnkit config dataclass shares: a plain-dict round trip for config.yaml and
    checkpoints, the choices of `config_field` enforced, and the record of given fields."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise suggest(key, known, "config key")
        return cls(**values)

    def check_choices(self) -> None:
        """Raise a CnnkitError with the closest choice for a field outside its choices."""
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:  # None: recipe decides
                raise suggest(value, choices, f.name.replace("_", "-"))

    def validate(self):
        self.check_choices()
        return self

    def resolve(self):
        """Validate and replace machine- or data-dependent defaults by their values."""
        return self.validate()

    def mark_given(self, names) -> None:
        """Record the fields the user set (command-line flags or the --config file)."""
        object.__setattr__(self, "_given", frozenset(names))

    def given_fields(self) -> frozenset[str]:
        given = getattr(self, "_given", None)
        if given is not None:
            return given
        return frozenset(f.name for f in fields(self) if getattr(self, f.name) != default_of(f))


@dataclass
class RunConfig(ConfigBase):
    """The fields of a run's life, shared by every task; each task's config extends it."""
    # A resumed run keeps its saved config except what the user gives again; these fields
    # describe the model and data (the weights would not fit or the epoch would change size).
    fixed_on_resume: ClassVar[tuple[str, ...]] = ()
    # Limits are taken anew: a resumed run without --max-time has no time limit.
    fresh_on_resume: ClassVar[tuple[str, ...]] = ("max_epochs", "max_time", "quiet", "resume")

    device: str = config_field("auto", "where to train: auto (CUDA when present), cpu or cuda",
                               ("auto", "cpu", "cuda"))
    precision: str = config_field("auto", "autocast: bf16, fp16 (CUDA), fp32, or auto: bf16 on "
                                  "CPUs that compute it natively (AMX/AVX512-BF16) and on CUDA "
                                  "GPUs that support it, else fp16 on CUDA, fp32 on CPU",
                                  ("auto", "fp32", "bf16", "fp16"))
    threads: int = config_field(0, "torch threads (0: torch's default)")
    seed: int = config_field(0, "seed for initialisation, data order, augmentation and noise")
    deterministic: bool = config_field(False, "deterministic algorithms only: bit-identical reruns")
    max_epochs: int | None = config_field(None, "stop after this many epochs in all, with a "
                                          "checkpoint; the schedule keeps --epochs; --resume continues")
    max_time: float | None = config_field(None, "stop after this many minutes of training (at a "
                                          "step boundary, with a checkpoint); --resume continues")
    out_dir: str = config_field("runs", "where run folders are created")
    name: str | None = config_field(None, "run folder name (default: <task>-<dataset>-<time>)")
    resume: str | None = config_field(None, "continue the run in this folder (or from this "
                                      "checkpoint); flags given with it change the saved config")
    quiet: bool = config_field(False, "no progress bars")
    tensorboard: bool = config_field(True, "write TensorBoard scalars into the run folder")

    def validate(self):
        self.check_choices()
        if self.max_epochs is not None and self.max_epochs < 1:
            raise CnnkitError(f"--max-epochs must be at least 1, got {self.max_epochs}")
        if self.max_time is not None and not self.max_time > 0:
            raise CnnkitError(f"--max-time must be a positive number of minutes, got "
                              f"{self.max_time}")
        if self.threads < 0:
            raise CnnkitError(f"--threads must be 0 (torch's default) or more, got {self.threads}")
        return self


def merge_for_resume(saved: dict, given: RunConfig) -> tuple[RunConfig, list[str]]:
    """The one resume rule: the run's saved config, then the fields the user gave now; limits
    (and quiet) taken anew. Returns the config and one note per changed field.

    A given field in `fixed_on_resume` that differs from the saved value is an error: the
    saved weights or the epoch position would not fit it.
    """
    cls = type(given)
    config = cls.from_dict(saved)
    notes = []
    for name in sorted(given.given_fields()):
        if name in cls.fresh_on_resume:
            continue
        new, old = getattr(given, name), getattr(config, name)
        if new == old:
            continue
        if name in cls.fixed_on_resume:
            raise CnnkitError(f"{flag(name)} {new} differs from the run's {old}; a resumed run "
                              f"keeps its model, data and batch size: start a new run instead")
        setattr(config, name, new)
        notes.append(f"{flag(name)} {old} → {new}")
    for name in cls.fresh_on_resume:
        setattr(config, name, getattr(given, name))
    return config, notes
