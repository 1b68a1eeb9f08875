"""Workflows: the whole recipe as data. `mmclf run WORKFLOW [key=value ...] [--out DIR] [--dry-run]`.

A workflow is a YAML file (shipped ones in `mmclf/workflows/`: demo, quickstart, rakuten-paper) with

    description: one line
    vars: {name: default, ...}         # overridable as name=value on the command line
    steps:
      NAME:
        stage: train                   # a stage of mmclf.stages
        config: text-tiny              # its recipe (a name, a YAML path), optional
        with: {dataset: "${steps.dataset.output}", folds: 3}    # the stage's keys (dotted keys allowed)
        launch: accelerate             # under `accelerate launch --config_file ${vars.accelerate_config}` when
                                       # that var is set (network trainings); otherwise in this process
        sweep: {hidden_size: [0, 6], seed: [0, 1]}   # one step per combination (a product), or a list of
        name: "fuse_h{hidden_size}_s{seed}"         # combinations; `{var}` is replaced in names and values

References in values: `${out}` (the output folder), `${vars.NAME}`, `${steps.NAME.output}` (a step's output
folder, OUT/NAME) and `${steps.GROUP.outputs}` (the list of a sweep's outputs). A value that is one reference
keeps its type (a list, a number, null; a null var leaves the recipe's value as it is). `{each: LIST, value:
TEMPLATE}` builds a list, LIST a sweep var or a list reference, `{item}` in TEMPLATE the element.

Every step writes OUT/NAME (a stage that writes a file writes it inside: ensemble -> predictions.csv, predict ->
submission.csv) and logs to OUT/logs/NAME.log. A step is skipped when its done marker matches: the fingerprint of
its stage, recipe content, resolved values, the mmclf version, the content of every outside file it reads and the
fingerprints and output digests of the steps it reads from, and its own outputs are unchanged since it finished.
Any difference reruns it, and through the fingerprints every step downstream. An interrupted training or denoise
step (its folder holds the same config, no done marker) resumes from its checkpoint; a stale step's folder is
replaced.

Command-line overrides: `NAME=VALUE` sets a var; `STEP.KEY=VALUE` sets a key of a step (or of every step of a
sweep, by the sweep's name), e.g. `text_base.model.name=PATH text_base.config=text-tiny fuse.epochs=20`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mmclf.rundir import RunFolder, config_differences, folder_digest, read_config, write_config

WORKFLOWS_DIR = Path(__file__).parent / "workflows"
REFERENCE = re.compile(r"\$\{([^}]+)\}")
STEP_KEYS = {"stage", "config", "with", "launch", "sweep", "name", "description"}
LAUNCHES = ("local", "accelerate")
FILE_OUTPUTS = {"ensemble": "predictions.csv", "predict": "submission.csv"}  # stages whose output is one file
RESUMABLE = {"train", "denoise"}
COMMAND_OF_STAGE = {"train": "train", "denoise": "denoise"}  # stages with a `--config YAML` command


class WorkflowError(ValueError):
    pass


@dataclass
class Step:
    name: str
    stage: str
    config: str | None
    values: dict  # the stage's keys, references unresolved
    launch: str = "local"
    group: str | None = None  # the sweep it belongs to
    depends: list[str] = field(default_factory=list)


@dataclass
class Decision:
    step: Step
    run: bool
    reason: str
    fingerprint: str | None = None


# --- reading ----------------------------------------------------------------------------------------------------

def workflow_names() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS_DIR.glob("*.yaml"))


def read_workflow(name_or_path) -> tuple[dict, Path]:
    path = Path(name_or_path)
    if not path.is_file():
        path = WORKFLOWS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"no workflow file {str(name_or_path)!r} and no shipped workflow of that name; "
                                    f"shipped workflows: {', '.join(workflow_names())}")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise WorkflowError(f"workflow {path} is not valid YAML: {error}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("steps"), dict) or not spec["steps"]:
        raise WorkflowError(f"workflow {path} needs a `steps:` mapping of step names to steps")
    unknown = set(spec) - {"description", "vars", "steps"}
    if unknown:
        raise WorkflowError(f"workflow {path}: unknown top-level keys {sorted(unknown)} (expected description, vars, "
                            "steps)")
    return spec, path


def split_overrides(overrides, variables: dict, step_names: set[str]) -> tuple[dict, dict]:
    """`name=value` items -> (var values, {step or sweep name: {dotted key: value}})."""
    var_values, step_values = {}, {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise WorkflowError(f"override {item!r} must look like name=value or step.key=value")
        value = yaml.safe_load(text) if text != "" else None
        head, dot, rest = key.partition(".")
        if not dot:
            if key not in variables:
                raise WorkflowError(f"unknown workflow variable {key!r}; variables: {', '.join(sorted(variables))} "
                                    f"(a step's key is set as STEP.KEY=VALUE)")
            var_values[key] = value
        elif head in step_names:
            step_values.setdefault(head, {})[rest] = value
        else:
            raise WorkflowError(f"override {item!r}: no step or sweep named {head!r}; steps: "
                                f"{', '.join(sorted(step_names))}")
    return var_values, step_values


def set_dotted(values: dict, dotted: str, value) -> None:
    node = values
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise WorkflowError(f"cannot set {dotted!r}: {part!r} is not a mapping")
    node[parts[-1]] = value


def expand_values(values, sweep_vars: dict):
    """Replace `{var}` by sweep values and expand `{each: ..., value: ...}` whose list is a sweep var."""
    if isinstance(values, dict):
        if set(values) == {"each", "value"} and values["each"] in sweep_vars:
            return [expand_values(values["value"], {**sweep_vars, "item": item}) for item in sweep_vars[values["each"]]]
        return {k: expand_values(v, sweep_vars) for k, v in values.items()}
    if isinstance(values, list):
        return [expand_values(v, sweep_vars) for v in values]
    if isinstance(values, str):
        for name, value in sweep_vars.items():
            text = "-".join(map(str, value)) if isinstance(value, list) else str(value)
            values = values.replace("{" + name + "}", text)
    return values


def sweep_combinations(sweep) -> list[dict]:
    if isinstance(sweep, list):
        return [dict(c) for c in sweep]
    if isinstance(sweep, dict):
        names = list(sweep)
        return [dict(zip(names, combo)) for combo in itertools.product(*(sweep[n] for n in names))]
    raise WorkflowError(f"a sweep must be a mapping of lists or a list of mappings, got {sweep!r}")


def load_steps(spec: dict, path: Path, step_overrides: dict) -> list[Step]:
    from mmclf.stages import STAGES

    steps: list[Step] = []
    for key, raw in spec["steps"].items():
        where = f"workflow {path}, step {key!r}"
        if not isinstance(raw, dict):
            raise WorkflowError(f"{where}: a step is a mapping with stage, config, with, launch")
        unknown = set(raw) - STEP_KEYS
        if unknown:
            raise WorkflowError(f"{where}: unknown keys {sorted(unknown)} (expected {', '.join(sorted(STEP_KEYS))})")
        stage = raw.get("stage")
        if stage not in STAGES:
            raise WorkflowError(f"{where}: unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        launch = raw.get("launch", "local")
        if launch not in LAUNCHES:
            raise WorkflowError(f"{where}: launch must be one of {LAUNCHES}, got {launch!r}")
        base = copy.deepcopy(raw.get("with") or {})
        config = raw.get("config")
        for dotted, value in (step_overrides.get(key) or {}).items():
            if dotted == "config":
                config = value
            else:
                set_dotted(base, dotted, value)
        combos = sweep_combinations(raw["sweep"]) if "sweep" in raw else [None]
        for combo in combos:
            name = key if combo is None else expand_values(raw.get("name", key + "_" + "_".join(
                "{" + n + "}" for n in combo)), combo)
            values = base if combo is None else expand_values(base, combo)
            steps.append(Step(name=name, stage=stage, config=expand_values(config, combo or {}), values=values,
                              launch=launch, group=None if combo is None else key))
    names = [s.name for s in steps]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise WorkflowError(f"workflow {path}: step names {repeated} occur more than once (a sweep's `name` must "
                            "tell its steps apart)")
    return steps


# --- resolving references -----------------------------------------------------------------------------------------

class Resolver:
    def __init__(self, out: Path, variables: dict, steps: list[Step], path: Path):
        self.out, self.variables, self.path = out, variables, path
        self.names = {s.name for s in steps}
        self.groups: dict[str, list[str]] = {}
        for s in steps:
            if s.group:
                self.groups.setdefault(s.group, []).append(s.name)

    def output(self, name: str) -> Path:
        return self.out / name

    def reference(self, text: str, step: str, depends: list[str], symbolic: bool):
        parts = text.split(".")
        if text == "out":
            return "<out>" if symbolic else str(self.out)
        if parts[0] == "vars" and len(parts) == 2:
            if parts[1] not in self.variables:
                raise WorkflowError(f"workflow {self.path}, step {step!r}: unknown variable ${{{text}}}")
            return self.variables[parts[1]]
        if parts[0] == "steps" and len(parts) == 3 and parts[2] in ("output", "outputs"):
            target = parts[1]
            members = self.groups.get(target) if parts[2] == "outputs" else ([target] if target in self.names else None)
            if not members:
                what = "sweep" if parts[2] == "outputs" else "step"
                raise WorkflowError(f"workflow {self.path}, step {step!r}: ${{{text}}} names no {what} {target!r} "
                                    f"(a missing input)")
            depends.extend(m for m in members if m not in depends)
            paths = [f"<steps.{m}>" if symbolic else str(self.output(m)) for m in members]
            return paths if parts[2] == "outputs" else paths[0]
        raise WorkflowError(f"workflow {self.path}, step {step!r}: cannot resolve ${{{text}}} (expected ${{out}}, "
                            "${vars.NAME}, ${steps.NAME.output} or ${steps.SWEEP.outputs})")

    def resolve(self, value, step: str, depends: list[str], symbolic: bool = False):
        if isinstance(value, dict):
            if set(value) == {"each", "value"}:
                items = self.resolve(value["each"], step, depends, symbolic)
                if not isinstance(items, list):
                    raise WorkflowError(f"workflow {self.path}, step {step!r}: `each` must give a list, got {items!r}")
                return [self.resolve(expand_values(value["value"], {"item": item}), step, depends, symbolic)
                        for item in items]
            resolved = {k: self.resolve(v, step, depends, symbolic) for k, v in value.items()}
            return {k: v for k, v in resolved.items() if v is not DROP}
        if isinstance(value, list):
            return [self.resolve(v, step, depends, symbolic) for v in value]
        if not isinstance(value, str):
            return value
        whole = REFERENCE.fullmatch(value)
        if whole:
            result = self.reference(whole.group(1), step, depends, symbolic)
            if result is None and whole.group(1).startswith("vars."):
                return DROP
            return self.resolve(result, step, depends, symbolic) if isinstance(result, str) and "${" in result \
                else result
        return REFERENCE.sub(lambda m: str(self.reference(m.group(1), step, depends, symbolic)), value)


DROP = object()  # a null variable: the key is left to the recipe


def resolve_variables(defaults: dict, given: dict) -> dict:
    variables = {**defaults, **given}
    for _ in range(len(variables) + 1):  # variables may refer to variables
        changed = False
        for name, value in variables.items():
            if isinstance(value, str) and "${vars." in value:
                new = REFERENCE.sub(lambda m: str(variables.get(m.group(1)[5:], m.group(0))), value)
                changed |= new != value
                variables[name] = new
        if not changed:
            break
    return variables


def check_order(steps: list[Step], path: Path) -> None:
    """Every step reads only steps before it: a reference to a later step (or itself) is a cycle or a forward
    reference, named."""
    position = {s.name: i for i, s in enumerate(steps)}
    for step in steps:
        for dep in step.depends:
            if position[dep] >= position[step.name]:
                kind = "itself" if dep == step.name else f"step {dep!r}, which comes later"
                raise WorkflowError(f"workflow {path}: step {step.name!r} reads {kind}: steps must be ordered so that "
                                    "each reads only earlier steps (a cycle?)")


# --- fingerprints --------------------------------------------------------------------------------------------------

def outside_paths(values, out: Path) -> list[Path]:
    """Existing files and folders a step reads from outside the workflow's output folder (raw files, images)."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value and "\n" not in value and len(value) < 4096:
            path = Path(value.split("=", 1)[1] if re.match(r"^[\w.-]+=", value) else value)
            with contextlib.suppress(OSError):
                if path.exists() and not path.resolve().is_relative_to(out.resolve()):
                    found.append(path)

    walk(values)
    return found


def fingerprint(step: Step, symbolic_values, resolved_values, recipe, upstream: dict, out: Path) -> str:
    import mmclf

    inputs = {str(p): folder_digest(p) for p in outside_paths(resolved_values, out)}
    payload = {"stage": step.stage, "recipe": recipe, "values": symbolic_values, "launch": step.launch,
               "mmclf": mmclf.__version__, "inputs": inputs, "upstream": upstream}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def recipe_content(config) -> dict | None:
    if config is None:
        return None
    from mmclf.training.config import read_recipe

    return read_recipe(config)


# --- running -------------------------------------------------------------------------------------------------------

class Workflow:
    def __init__(self, name_or_path, out=None, overrides=()):
        spec, self.path = read_workflow(name_or_path)
        self.description = spec.get("description", "")
        defaults = dict(spec.get("vars") or {})
        raw_names = set(spec["steps"])
        var_values, step_values = split_overrides(overrides, {**defaults, "out": None}, raw_names)
        self.out = Path(var_values.pop("out", None) or out or defaults.pop("out", None) or f"{self.path.stem}_out")
        defaults.pop("out", None)
        self.variables = resolve_variables(defaults, var_values)
        self.steps = load_steps(spec, self.path, step_values)
        self.resolver = Resolver(self.out, self.variables, self.steps, self.path)
        self.resolved: dict[str, tuple] = {}
        for step in self.steps:
            symbolic = self.resolver.resolve(step.values, step.name, step.depends, symbolic=True)
            resolved = self.resolver.resolve(step.values, step.name, [], symbolic=False)
            self.resolved[step.name] = (symbolic, resolved)
        check_order(self.steps, self.path)

    def stage_values(self, step: Step) -> dict:
        """The stage's keyword values: the resolved `with` plus where it writes (and `resume` when continuing)."""
        values = copy.deepcopy(self.resolved[step.name][1])
        folder = self.out / step.name
        if step.stage in FILE_OUTPUTS:
            values["output"] = str(folder / FILE_OUTPUTS[step.stage])
        else:
            values["output_dir"] = str(folder)
        return values

    def decide_step(self, step: Step, markers: dict[str, dict], rerunning: list[str] = ()) -> Decision:
        """Run or skip `step`, and why, given the done markers of the steps it reads (`rerunning`: those of them
        that will run first, when deciding ahead)."""
        folder = RunFolder(self.out / step.name)
        marker = folder.done_marker()
        never_run = marker is None and not folder.path.exists()
        if rerunning:
            return Decision(step, True, "not run yet" if never_run else f"upstream step {rerunning[0]!r} runs")
        upstream = {d: {"fingerprint": markers[d]["fingerprint"], "outputs": markers[d]["outputs"]}
                    for d in step.depends}
        symbolic, resolved = self.resolved[step.name]
        fp = fingerprint(step, symbolic, resolved, recipe_content(step.config), upstream, self.out)
        if never_run:
            return Decision(step, True, "not run yet", fp)
        if marker is None:
            return Decision(step, True, "unfinished: no done marker", fp)
        if marker.get("fingerprint") != fp:
            return Decision(step, True, "changed since it finished (config, inputs or mmclf version)", fp)
        if folder_digest(folder.path) != marker.get("outputs"):
            return Decision(step, True, "its outputs changed since it finished", fp)
        return Decision(step, False, "done, fingerprint matches", fp)

    def decide(self) -> list[Decision]:
        """For every step, decided ahead: run or skip, and why. A step downstream of one that runs is said to run
        (when run, it is skipped after all if what it reads comes out unchanged)."""
        decisions: dict[str, Decision] = {}
        markers: dict[str, dict] = {}
        for step in self.steps:
            rerunning = [d for d in step.depends if decisions[d].run]
            decisions[step.name] = decision = self.decide_step(step, markers, rerunning)
            if not decision.run:
                markers[step.name] = RunFolder(self.out / step.name).done_marker()
        return [decisions[s.name] for s in self.steps]

    def run(self, dry_run: bool = False, echo=print) -> list[Decision]:
        """Run the steps in order, each decided when its turn comes; returns the decisions."""
        if dry_run:
            decisions = self.decide()
            for d in decisions:
                echo(f"{'run ' if d.run else 'skip'} {d.step.name}: {d.reason}")
            return decisions
        self.out.mkdir(parents=True, exist_ok=True)
        write_config({"workflow": str(self.path), "vars": self.variables}, self.out / "workflow.yaml")
        markers: dict[str, dict] = {}
        decisions = []
        for step in self.steps:
            folder = RunFolder(self.out / step.name)
            decision = self.decide_step(step, markers)
            decisions.append(decision)
            if not decision.run:
                markers[step.name] = folder.done_marker()
                echo(f"[skip] {step.name} ({decision.reason})")
                continue
            log = self.out / "logs" / f"{step.name}.log"
            echo(f"[run ] {step.name} ({decision.reason}; log: {log})")
            started = time.perf_counter()
            self.run_step(step, folder, log)
            markers[step.name] = folder.mark_done(decision.fingerprint, stage=step.stage)
            echo(f"[done] {step.name} in {time.perf_counter() - started:.0f} s")
        return decisions

    def run_step(self, step: Step, folder: RunFolder, log: Path) -> None:
        from mmclf.stages import STAGES, expert_config

        values = self.stage_values(step)
        if folder.path.exists():
            resumable = False
            if step.stage in RESUMABLE and folder.config_file.is_file() and folder.done_marker() is None:
                from mmclf.denoise import SECTIONS
                from mmclf.training.config import RESUME_FREE_KEYS

                wanted = expert_config(step.config, (), values, SECTIONS if step.stage == "denoise" else None)
                resumable = not config_differences(read_config(folder.config_file), wanted, RESUME_FREE_KEYS)
            if resumable:
                values["resume"] = True
            else:
                shutil.rmtree(folder.path)  # a stale or half-written output of another config
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as stream:
            stream.write(f"### {time.strftime('%F %T')} step {step.name}: stage {step.stage}, config {step.config}\n")
        accelerate_config = self.variables.get("accelerate_config")
        try:
            if step.launch == "accelerate" and accelerate_config and step.stage in COMMAND_OF_STAGE:
                self.launch(step, values, accelerate_config, log)
            else:
                with open(log, "a") as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                    STAGES[step.stage](step.config, (), **values)
        except Exception as error:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise StepFailed(f"step {step.name!r} failed: {error}\nthe end of {log}:\n{tail}\nfix the cause and rerun "
                             "the same command to continue") from error

    def launch(self, step: Step, values: dict, accelerate_config, log: Path) -> None:
        from mmclf.denoise import SECTIONS
        from mmclf.stages import expert_config

        config = expert_config(step.config, (), values, SECTIONS if step.stage == "denoise" else None)
        config_file = write_config(config, self.out / "logs" / f"{step.name}.config.yaml")
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
                   "-m", "mmclf", COMMAND_OF_STAGE[step.stage], "--config", str(config_file)]
        with open(log, "a") as stream:
            stream.write("### " + " ".join(command) + "\n")
            stream.flush()
            result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"accelerate launch exited with code {result.returncode}")


class StepFailed(RuntimeError):
    pass


def run_workflow(name_or_path, overrides=(), *, out=None, dry_run: bool = False, echo=print) -> Workflow:
    """Run (or with `dry_run` only decide) a workflow; returns it (its `out` holds every step's folder)."""
    workflow = Workflow(name_or_path, out, overrides)
    workflow.run(dry_run=dry_run, echo=echo)
    return workflow
