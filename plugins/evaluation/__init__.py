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
from typing import Any

import click

import duma

DEFAULT_OUT = "eval-results"


def _state(ctx: click.Context) -> Any:
    from duma.cli import CliState

    state = ctx.find_object(CliState)
    return state if state is not None else CliState(None, False)


def _model_spec(ctx: click.Context, model: str | None, backend: str | None) -> Any:
    """The config's ``model`` spec with ``-m``/``--backend`` applied."""
    spec = _state(ctx).config.model
    update = {k: v for k, v in (("model", model), ("backend", backend)) if v}
    return spec.model_copy(update=update) if update else spec


def load_backend(spec: Any) -> Any:
    """A backend instance for a model spec (shared per spec when duma.models has the cache)."""
    try:
        from duma.models import load_backend as cached
    except ImportError:
        from duma import host

        return host.get("backend", spec.backend)(spec)
    return cached(spec)


def _split_classes(classes: tuple[str, ...]) -> list[str] | None:
    names = [part.strip() for value in classes for part in value.split(",") if part.strip()]
    return names or None


def build_judge(name: str, judge_spec: Any, prompts_path: str | None, retries: int) -> Any:
    """A judge instance: ``needs_backend`` judges get the judge model's backend."""
    from duma import host

    judge_cls = host.get("judge", name)
    if not getattr(judge_cls, "needs_backend", False):
        return judge_cls()
    kwargs: dict[str, Any] = {"backend": load_backend(judge_spec), "retries": retries}
    if prompts_path:
        from duma.plugins.evaluation.judging import load_judge_prompts

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


@duma.hookimpl
def register_commands(cli: Any) -> None:
    @cli.group(name="eval")
    def eval_group() -> None:
        """Evaluate models and the agent: judged sets, perplexity, routing."""

    @eval_group.command(name="run")
    @click.option("--set", "set_path", required=True, type=click.Path(dir_okay=False),
                  help="Evaluation set: JSONL (or a JSON list) of {question, std_answer, class}.")
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
    @click.pass_context
    def eval_run(ctx: click.Context, set_path: str, limit: int | None, classes: tuple[str, ...], resume: bool,
                 model: str | None, backend: str | None, use_agent: bool, judge_name: str, judge_model: str | None,
                 judge_backend: str | None, judge_prompts: str | None, retries: int, out_dir: str,
                 bootstrap: int, seed: int) -> None:
        """Answer every question of a set, judge the answers, report BELLE's scores.

        Scores: the mean per class, the macro average over classes and the average without
        math and code, each with a seeded bootstrap 95% interval. Answers are appended to
        OUT/answers.jsonl as they come: rerun the same command to resume.
        """
        from duma.plugins.evaluation.dataset import read_eval_set
        from duma.plugins.evaluation.judged import run_judged_eval, timed
        from duma.plugins.evaluation.report import write_report
        from duma.types import Message

        items = read_eval_set(set_path, limit=limit, classes=_split_classes(classes))
        spec = _model_spec(ctx, model, backend)
        judge_spec = spec.model_copy(update={k: v for k, v in (("model", judge_model),
                                                               ("backend", judge_backend)) if v})
        if use_agent:
            agent = _routed_agent(ctx)
            answerer = timed(lambda question: agent.chat(question).text)
            label = f"agent ({_state(ctx).config.agent.router} router)"
        else:
            answer_backend = load_backend(spec)
            answerer = timed(lambda question: answer_backend.generate(
                [Message(role="user", content=question)], spec.options).text)
            label = f"{spec.backend}:{spec.model}"
        judge = build_judge(judge_name, judge_spec, judge_prompts, retries)

        def on_item(record: Any, progress: Any) -> None:
            done = progress.skipped + progress.answered
            if record.answer_error:
                detail = f"answer failed: {record.answer_error}"
            elif record.score is None:
                detail = f"judge: {record.judge_error}"
            else:
                detail = f"score {record.score:.2f}"
            _progress(done, progress.total, record.id, record.klass, detail)

        report = run_judged_eval(items, answerer, judge, out_dir, resume=resume, retries=retries,
                                 bootstrap=bootstrap, seed=seed, set_name=str(set_path), model=label,
                                 on_item=on_item)
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

    @eval_group.command(name="routing")
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.option("--slow-share", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
                  help="Share of turns sent to the slow mind at the calibrated threshold.")
    @click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
                  help="Also write routing.json (with the curve) and routing.png into this folder.")
    def eval_routing(file: str, slow_share: float, out_dir: str | None) -> None:
        """Routing metrics from FILE: JSONL of {id, fast_score, slow_score, router_score}
        (optional fast_latency_s, slow_latency_s), one line per turn.

        Prints JSON: APGR (area under PGR against the share of slow calls; random routing
        0.5), CPT50/CPT80 (share of slow calls reaching 50%/80% of the quality gap),
        fast-only and slow-only quality, and quality and mean latency at the threshold that
        sends --slow-share of the turns to the slow mind.
        """
        from duma.plugins.evaluation.routing import plot_pgr_curve, read_routing_records, routing_metrics

        report = routing_metrics(read_routing_records(file), slow_share)
        if report.problem:
            click.echo(f"duma: warning: {report.problem}", err=True)
        if out_dir:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "routing.json").write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n",
                                              encoding="utf-8")
            plot_pgr_curve(report, out / "routing.png")
        click.echo(json.dumps(report.model_dump(mode="json", exclude={"curve"}), indent=2))

    @eval_group.command(name="agent")
    @click.argument("set_path", metavar="SET", type=click.Path(dir_okay=False))
    @_set_options
    @_judge_options
    @click.option("--slow-share", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
                  help="Share of slow calls at the calibrated threshold in the routing metrics.")
    @click.option("--out", "out_dir", default=DEFAULT_OUT + "/agent", show_default=True,
                  type=click.Path(file_okay=False),
                  help="Folder for agent_turns.jsonl, routing.jsonl, routing.json, routing.png, agent_summary.json.")
    @click.pass_context
    def eval_agent(ctx: click.Context, set_path: str, limit: int | None, classes: tuple[str, ...], resume: bool,
                   judge_name: str, judge_model: str | None, judge_backend: str | None, judge_prompts: str | None,
                   retries: int, slow_share: float, out_dir: str) -> None:
        """Run the agent on SET (and its fast mind alone, and its slow path alone), judge the
        answers and measure routing: whether the slow mind ran, the router's score,
        latencies, and the routing metrics of 'duma eval routing'."""
        from duma.plugins.evaluation.agent_eval import build_agents, run_agent_eval
        from duma.plugins.evaluation.dataset import read_eval_set

        items = read_eval_set(set_path, limit=limit, classes=_split_classes(classes))
        config = _state(ctx).config
        fast_spec = config.mind("fast")
        judge_spec = _plain_spec(fast_spec).model_copy(
            update={k: v for k, v in (("model", judge_model), ("backend", judge_backend)) if v})
        judge = build_judge(judge_name, judge_spec, judge_prompts, retries)
        agents = build_agents(config)
        total = len(items)
        counter = {"n": 0}

        def on_item(record: Any) -> None:
            counter["n"] += 1
            scores = ", ".join(f"{w} {_fmt(getattr(record, w).score)}" for w in ("routed", "fast", "slow"))
            slow = "slow" if record.routed.slow_ran else "fast"
            _progress(counter["n"], total, record.id, record.klass, f"{slow} path; {scores}")

        summary = run_agent_eval(items, agents, judge, out_dir, resume=resume, slow_share=slow_share,
                                 retries=min(retries, 1), on_item=on_item)
        click.echo(json.dumps(summary.model_dump(mode="json"), indent=2))


def _routed_agent(ctx: click.Context) -> Any:
    from duma.plugins.evaluation.agent_eval import ROUTED, build_agents

    return build_agents(_state(ctx).config, only=ROUTED)[ROUTED]


def _plain_spec(mind: Any) -> Any:
    """A ModelSpec from a MindConfig (which adds system_prompt)."""
    from duma.types import ModelSpec

    return ModelSpec(**mind.model_dump(exclude={"system_prompt"}))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _summary_line(report: Any) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    extra = f"; unparsed {report.n_unparsed}, failed {report.n_failed}" if report.n_unparsed or report.n_failed else ""
    unknown = f"; unknown classes: {', '.join(report.unknown_classes)}" if report.unknown_classes else ""
    return (f"macro {f(report.macro)}, without math and code {f(report.score_wo_others)} "
            f"over {report.n_scored}/{report.n} items{extra}{unknown}")


__all__ = ["build_judge", "load_backend", "register_commands"]
