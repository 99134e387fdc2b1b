"""``duma eval``: judged evaluation on BELLE-style sets, perplexity and routing metrics.

Commands: ``run`` (answer and judge a set, BELLE's scores with bootstrap intervals),
``ppl`` (sliding-window perplexity), ``routing`` (PGR/APGR/CPT of a router from per-turn
qualities) and ``agent`` (run the agent, its fast mind alone and its slow path alone on a
set, and measure routing).

Imported when the CLI starts: only click here; the work lives in the package's modules,
imported inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from duma import hookimpl, pass_state

if TYPE_CHECKING:
    from duma.cli import CliState
    from duma.judge import Judge
    from duma.plugins.evaluation.report import EvalReport
    from duma.types import ModelSpec

DEFAULT_OUT = "eval-results"


def _split_classes(classes: tuple[str, ...]) -> list[str] | None:
    names = [part.strip() for value in classes for part in value.split(",") if part.strip()]
    return names or None


def judge_spec(answering: ModelSpec, judge_model: str | None, judge_backend: str | None) -> ModelSpec:
    """The judge's model spec: the answering one (a mind's without its system prompt) with
    ``--judge-model`` and ``--judge-backend`` applied."""
    from duma.types import ModelSpec

    fields = answering.model_dump(include=set(ModelSpec.model_fields))
    fields.update({key: value for key, value in (("model", judge_model), ("backend", judge_backend)) if value})
    return ModelSpec.model_validate(fields)


def build_judge(name: str, spec: ModelSpec, prompts_path: str | None, retries: int) -> Judge:
    """A judge instance: ``needs_backend`` judges get the backend of ``spec``."""
    from duma import host
    from duma.models import load_backend

    judge_cls = host.get("judge", name)
    if not getattr(judge_cls, "needs_backend", False):
        return judge_cls()
    kwargs: dict[str, Any] = {"backend": load_backend(spec), "retries": retries}
    if prompts_path:
        from duma.plugins.evaluation.builtin_judges import load_judge_prompts

        kwargs["prompts"] = load_judge_prompts(prompts_path)
    return judge_cls(**kwargs)


def _judge_options(func: Any) -> Any:
    options = [
        click.option("--judge", "judge_name", default="llm", show_default=True,
                     help="Registered judge: llm, exact, contains, numeric (see 'duma plugins')."),
        click.option("--judge-model", default=None, help="Model of the llm judge (default: the answering model)."),
        click.option("--judge-backend", default=None, help="Backend of the judge model (default: the answering one)."),
        click.option("--judge-prompts", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Judge prompts, one per class, in the format of BELLE's eval_prompt.json."),
        click.option("--retries", type=click.IntRange(0, 10), default=2, show_default=True,
                     help="Extra attempts when the answering or judge model fails."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _set_options(func: Any) -> Any:
    options = [
        click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N items."),
        click.option("--classes", multiple=True, help="Only these classes (comma-separated or repeated)."),
        click.option("--resume/--no-resume", default=True, show_default=True,
                     help="Keep finished items of an earlier run in --out and skip them."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _progress(index: int, total: int, item_id: str, klass: str, detail: str) -> None:
    click.echo(f"[{index}/{total}] {item_id} ({klass}) {detail}", err=True)


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.group(name="eval")
    def eval_group() -> None:
        """Evaluate models and the agent: judged sets, perplexity, routing, reward models."""

    @eval_group.command(name="run")
    @click.option("--set", "set_path", required=True, type=click.Path(dir_okay=False),
                  help="Evaluation set: JSONL, a JSON list or Parquet of {question, std_answer, class}.")
    @_set_options
    @click.option("-m", "--model", default=None, help="Model to answer with (default: config 'model').")
    @click.option("--backend", default=None, help="Backend of the answering model (default: config).")
    @click.option("--agent", "use_agent", is_flag=True, help="Answer with the full agent (config 'agent').")
    @_judge_options
    @click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
                  help="Folder for answers.jsonl, report.md, report.json and scores.png.")
    @click.option("--bootstrap", type=click.IntRange(0), default=1000, show_default=True,
                  help="Bootstrap resamples for the 95% intervals (0: none).")
    @click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
    @pass_state
    def eval_run(state: CliState, set_path: str, limit: int | None, classes: tuple[str, ...], resume: bool,
                 model: str | None, backend: str | None, use_agent: bool, judge_name: str, judge_model: str | None,
                 judge_backend: str | None, judge_prompts: str | None, retries: int, out_dir: str,
                 bootstrap: int, seed: int) -> None:
        """Answer every question of a set, judge the answers, report BELLE's scores.

        Scores: the mean per class, the macro average over classes and the average without
        math and code, each with a seeded bootstrap 95% interval. Answers are appended to
        OUT/answers.jsonl as they come: rerun the same command to resume.
        """
        from duma.models import load_backend
        from duma.plugins.evaluation.agent_eval import ROUTED, build_agents
        from duma.plugins.evaluation.dataset import read_eval_set
        from duma.plugins.evaluation.report import write_report
        from duma.plugins.evaluation.runner import (AnswerRecord, agent_answerer, backend_answerer,
                                                    run_judged_eval)

        items = read_eval_set(set_path, limit=limit, classes=_split_classes(classes))
        config = state.config_with(model=model, backend=backend)
        spec = config.model
        if use_agent:
            answerer = agent_answerer(build_agents(config, only=ROUTED)[ROUTED])
            label = f"agent ({config.agent.router} router)"
        else:
            answerer = backend_answerer(load_backend(spec), spec.options)
            label = f"{spec.backend}:{spec.model}"
        judge = build_judge(judge_name, judge_spec(spec, judge_model, judge_backend), judge_prompts, retries)

        def on_record(record: AnswerRecord, position: int) -> None:
            if record.answer_error:
                detail = f"answer failed: {record.answer_error}"
            elif record.score is None:
                detail = f"judge: {record.judge_error}"
            else:
                detail = f"score {record.score:.2f}"
            _progress(position, len(items), record.id, record.klass, detail)

        report = run_judged_eval(items, answerer, judge, out_dir, resume=resume, retries=retries,
                                 bootstrap=bootstrap, seed=seed, set_name=str(set_path), model=label,
                                 on_record=on_record)
        paths = write_report(report, out_dir)
        click.echo(_summary_line(report))
        click.echo(f"wrote {Path(out_dir) / 'answers.jsonl'}, {paths['markdown']}, {paths['json']}, {paths['chart']}")

    @eval_group.command(name="ppl")
    @click.argument("model")
    @click.argument("textfile", type=click.Path(dir_okay=False))
    @click.option("--max-length", type=click.IntRange(2), default=None,
                  help="Window length in tokens (default: the model's context, at most 2048).")
    @click.option("--stride", type=click.IntRange(1), default=None,
                  help="Tokens between window starts (default: half the window).")
    @click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
    @click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                  show_default=True)
    @click.option("--adapter", default=None, help="A peft adapter folder to apply.")
    def eval_ppl(model: str, textfile: str, max_length: int | None, stride: int | None, device: str,
                 dtype: str, adapter: str | None) -> None:
        """Sliding-window perplexity of MODEL ('embedded', an HF folder or a .gguf) on TEXTFILE.

        Prints JSON: tokens, tokens scored, windows, mean NLL and perplexity.
        """
        from duma.plugins.evaluation.perplexity import perplexity

        report = perplexity(model, textfile, max_length=max_length, stride=stride, device=device,
                            dtype=dtype, adapter=adapter)
        click.echo(json.dumps(report.model_dump(mode="json"), indent=2))

    @eval_group.command(name="rm")
    @click.argument("model_folder", type=click.Path(file_okay=False))
    @click.argument("pairs_file", type=click.Path(dir_okay=False))
    @click.option("--source", default="preference", show_default=True,
                  help="Data source of PAIRS_FILE (one giving preference records).")
    @click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N pairs.")
    @click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
    @click.option("--device", default="cpu", show_default=True, help="cpu, auto or cuda[:N].")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    def eval_rm(model_folder: str, pairs_file: str, source: str, limit: int | None, batch_size: int, device: str,
                as_json: bool) -> None:
        """Pair accuracy of a reward model (the output_dir of a method: rm run) on PAIRS_FILE:
        the share of pairs whose chosen reply gets the higher reward, and the mean margin
        r_chosen - r_rejected."""
        from duma.trainers.rm import pair_accuracy

        report = pair_accuracy(model_folder, pairs_file, source, limit=limit, device=device, batch_size=batch_size)
        if as_json:
            click.echo(json.dumps(report.model_dump(mode="json"), indent=2))
        else:
            click.echo(f"pair accuracy {report.accuracy:.3f} over {report.pairs} pairs, mean margin "
                       f"{report.mean_margin:.3f} (chosen {report.mean_chosen:.3f}, rejected {report.mean_rejected:.3f})")

    @eval_group.command(name="routing")
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.option("--slow-share", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
                  help="Share of turns sent to the slow mind at the calibrated threshold.")
    @click.option("--out", "out_dir", default=DEFAULT_OUT + "/routing", show_default=True,
                  type=click.Path(file_okay=False),
                  help="Folder for routing.json (the report with its curve) and routing.png (the curve).")
    def eval_routing(file: str, slow_share: float, out_dir: str) -> None:
        """Routing metrics from FILE: JSONL of {id, fast_score, slow_score, router_score}
        (optional fast_latency_s, slow_latency_s), one line per turn, such as the routing.jsonl
        that 'duma eval agent' writes or configs/examples/routers/routing.jsonl.

        Prints JSON: APGR (area under PGR against the share of slow calls; random routing
        0.5), CPT50/CPT80 (share of slow calls reaching 50%/80% of the quality gap),
        fast-only and slow-only quality, and quality and mean latency at the threshold that
        sends --slow-share of the turns to the slow mind. Writes the report and the PGR curve
        into --out and says where on stderr.
        """
        from duma.plugins.evaluation.routing import read_routing_records, routing_metrics, write_routing_report

        report = routing_metrics(read_routing_records(file), slow_share)
        if report.problem:
            click.echo(f"duma: warning: {report.problem}", err=True)
        paths = write_routing_report(report, out_dir)
        click.echo(json.dumps(report.model_dump(mode="json", exclude={"curve"}), indent=2))
        click.echo(f"wrote {paths['json']} and {paths['chart']}", err=True)

    @eval_group.command(name="agent")
    @click.argument("set_path", metavar="SET", type=click.Path(dir_okay=False))
    @_set_options
    @_judge_options
    @click.option("--slow-share", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
                  help="Share of slow calls at the calibrated threshold in the routing metrics.")
    @click.option("--out", "out_dir", default=DEFAULT_OUT + "/agent", show_default=True,
                  type=click.Path(file_okay=False),
                  help="Folder for agent_turns.jsonl, routing.jsonl, routing.json, routing.png, agent_summary.json.")
    @pass_state
    def eval_agent(state: CliState, set_path: str, limit: int | None, classes: tuple[str, ...], resume: bool,
                   judge_name: str, judge_model: str | None, judge_backend: str | None, judge_prompts: str | None,
                   retries: int, slow_share: float, out_dir: str) -> None:
        """Run the agent on SET (and its fast mind alone, and its slow path alone), judge the
        answers and measure routing: whether the slow mind ran, the router's score,
        latencies, and the routing metrics of 'duma eval routing'."""
        from duma.plugins.evaluation.agent_eval import AgentTurnRecord, build_agents, run_agent_eval
        from duma.plugins.evaluation.dataset import read_eval_set

        items = read_eval_set(set_path, limit=limit, classes=_split_classes(classes))
        config = state.config
        judge = build_judge(judge_name, judge_spec(config.mind("fast"), judge_model, judge_backend),
                            judge_prompts, retries)
        agents = build_agents(config)

        def on_record(record: AgentTurnRecord, position: int) -> None:
            scores = ", ".join(f"{name} {_fmt(answer.score)}" for name, answer in record.answers().items())
            path = "slow" if record.routed.slow_ran else "fast"
            _progress(position, len(items), record.id, record.klass, f"{path} path; {scores}")

        summary = run_agent_eval(items, agents, judge, out_dir, resume=resume, slow_share=slow_share,
                                 retries=retries, on_record=on_record)
        click.echo(json.dumps(summary.model_dump(mode="json"), indent=2))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _summary_line(report: EvalReport) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    extra = f"; unparsed {report.n_unparsed}, failed {report.n_failed}" if report.n_unparsed or report.n_failed else ""
    unknown = f"; unknown classes: {', '.join(report.unknown_classes)}" if report.unknown_classes else ""
    return (f"macro {f(report.macro)}, without math and code {f(report.score_wo_others)} "
            f"over {report.n_scored}/{report.n} items{extra}{unknown}")


__all__ = ["build_judge", "judge_spec", "register_commands"]
