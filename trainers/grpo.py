"""``grpo``: Group Relative Policy Optimisation with verifiable rewards, on prompt records
(``{messages, answer}``, data source ``prompts``); the policy is the whole model or, with a
``lora:`` section, a LoRA adapter.

Each optimizer step, for every prompt of the micro-batch, ``group_size`` completions are
sampled from the current policy, scored with the registered rewards named in
``grpo.rewards`` (see ``register_rewards``), and each completion's advantage is its reward
normalised within its prompt's group. The loss is PPO's clipped objective per completion
token against the log-probs at sampling time (one optimisation pass per generation, so the
ratio is 1 and the clip is inactive; the form is kept for when it is not), plus an optional
KL penalty to the starting model (k3 estimator). Tokens inside ``Obs[...]`` (tool
observations in a slow-mind trace: written by tools, not by the model) carry no loss. With
``grpo.run_tools`` the tools run during sampling: a sampled turn that writes ``Act[...]`` gets
the tool's real observation as the next user turn, and sampling goes on from there.

Sampling runs HF ``generate`` on the engine's own module. duma's inference backends load
weights from a folder once; the policy changes every step, and wrapping a live, partly
DeepSpeed-managed module in a backend would bypass what makes them backends (their caches,
adapters per call, stop strings). Each micro-batch samples under a torch RNG seeded from
(training seed, optimizer step, the rows' ids), forked so the global RNG streams are left
alone: sampling is a pure function of the weights and the step, so a resumed run samples
exactly what an uninterrupted run samples, on CPU and GPU alike, without any RNG state in
the checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from duma.config import Strict
from duma.errors import ConfigError, DumaError, first_line
from duma.trainers.base import PhaseBar, Trainer
from duma.trainers.config import DataConfig, RunConfig
from duma.trainers.lora import LoraPolicyTrainer, LoraSettings

if TYPE_CHECKING:
    import torch

ROWS_KEY = "grpo_rows"  # the batch key of the prompt rows (generation happens in compute_loss)
_OBS_RE = re.compile(r"\bObs\[")


class GRPOSettings(Strict):
    group_size: int = Field(4, ge=2, description="Completions sampled per prompt (G).")
    max_new_tokens: int = Field(32, ge=1, description="Longest completion, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (log-probs use the same).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling; 1 = off.")
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 = off.")
    rewards: list[str] = Field(min_length=1, description="Names of registered rewards (duma plugins lists them).")
    reward_weights: list[float] | None = Field(
        None, description="Weight of each reward in the total (default: 1 each), in the order of rewards.")
    scale_rewards: bool = Field(True, description="Divide advantages by the group's reward std (false: Dr. GRPO).")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO clip range of the probability ratio.")
    kl_beta: float = Field(0.0, ge=0, description="Weight of the KL penalty to the starting model (k3); 0 = none.")
    num_iterations: int = Field(1, ge=1, le=1, description="Optimisation passes per generated batch (only 1 "
                                "for now: every step samples afresh from the current policy).")
    loss_aggregation: Literal["sequence", "token"] = Field(
        "sequence", description="sequence: mean over each completion's tokens, then over completions (GRPO); "
        "token: mean over all completion tokens of the batch (DAPO).")
    mask_observations: bool = Field(True, description="No loss on tokens inside Obs[...] spans.")
    run_tools: bool = Field(
        False, description="Sample slow-mind traces with the registered tools in the loop: a turn that writes "
        "Act[...] gets the tool's real Obs[...] as the next user turn and sampling goes on (observation tokens "
        "carry no loss); the rewards see the whole trace.")
    tool_rounds: int = Field(4, ge=1, description="With run_tools: most Reason/Act turns per sampled trace.")
    knowledge_dir: str | None = Field(None, description="With run_tools: the folder search_knowledge reads.")

    @model_validator(mode="after")
    def _weights_match(self) -> GRPOSettings:
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"grpo.reward_weights has {len(self.reward_weights)} entries for "
                             f"{len(self.rewards)} rewards; give one weight per reward")
        return self


class GRPODataConfig(DataConfig):
    source: str = Field("prompts", description="Name of a registered data source giving prompt records.")


class GRPOConfig(RunConfig):
    """Run config of the ``grpo`` trainer; ``data.source`` reads prompt records.
    ``training.batch_size`` counts prompts (each sampled ``grpo.group_size`` times);
    ``data.max_length`` bounds prompt + completion."""

    method: Literal["grpo"] = "grpo"
    data: GRPODataConfig
    grpo: GRPOSettings
    lora: LoraSettings | None = Field(None, description="Train a LoRA adapter as the policy (base frozen).")

    @model_validator(mode="after")
    def _check(self) -> GRPOConfig:
        if self.training.packing:
            raise ValueError("training.packing: grpo samples completions per prompt; set packing false")
        if self.training.zero_stage == 3:
            raise ValueError("training.zero_stage: grpo samples with the whole model on every process; "
                             "use zero_stage 0, 1 or 2")
        if self.data.max_length <= self.grpo.max_new_tokens:
            raise ValueError(f"data.max_length ({self.data.max_length}) must exceed grpo.max_new_tokens "
                             f"({self.grpo.max_new_tokens}): it bounds prompt + completion")
        return self


@dataclass
class PromptRow:
    """One row of a GRPO run: a rendered prompt and what the rewards need."""

    prompt_ids: list[int]
    messages: list[dict[str, str]]
    answer: str | None
    ids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompt_ids)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """``(r - mean) / (std + eps)`` within each consecutive group of ``group_size`` rewards
    (without the division when ``scale`` is false)."""
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(-1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(-1, keepdim=True) + eps)
    return centred.reshape(-1)


def observation_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the ``Obs[...]`` fields in ``text`` (an unclosed
    one runs to the end)."""
    from duma.agents.protocol import find_closing

    spans = []
    pos = 0
    while (m := _OBS_RE.search(text, pos)) is not None:
        close = find_closing(text, m.end())
        end = len(text) if close < 0 else close + 1
        spans.append((m.start(), end))
        pos = end
    return spans


def observation_mask(tokenizer: Any, ids: Sequence[int]) -> list[bool]:
    """Per token of a completion: True if it is trained, False if any of its characters lies
    inside an ``Obs[...]`` span (the observation's brackets included)."""
    text = tokenizer.decode(list(ids), skip_special_tokens=False)
    spans = observation_spans(text)
    if not spans:
        return [True] * len(ids)
    keep, start = [], 0
    for i in range(len(ids)):
        # Where token i ends: the decoded prefix's length (monotone even when a prefix cuts a
        # multi-byte character).
        end = max(start, min(len(text), len(tokenizer.decode(list(ids[:i + 1]), skip_special_tokens=False))))
        keep.append(not any(s < max(end, start + 1) and start < e for s, e in spans))
        start = end
    return keep


def sampling_seed(seed: int, kind: str, step: int, ids: Sequence[int]) -> int:
    """The seed a micro-batch samples with: a function of the run's seed, the optimizer step
    and the rows, nothing else (so a resumed run samples the same completions)."""
    key = f"{seed}:{kind}:{step}:{','.join(map(str, ids))}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


@contextmanager
def sampling_mode(module: Any, seed: int) -> Iterator[None]:
    """Sample from ``module`` without dropout or gradients, under ``seed``, leaving the global
    RNG (the training run's, CUDA's included) and the module's train/eval mode as they were."""
    import torch

    device = next(module.parameters()).device
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
    finally:
        module.train(was_training)


def prompt_rows(trainer: Trainer, tokenizer: Any, max_new_tokens: int) -> list[PromptRow]:
    """A trainer's prompt records as rows to sample from (grpo and ppo): the prompt ids from the
    one renderer, cut from the start to leave ``max_new_tokens`` of room in ``data.max_length``."""
    from duma.data import PromptRecord
    from duma.rendering import render_prompt_ids

    d = trainer.config.data
    room = d.max_length - max_new_tokens
    rows: list[PromptRow] = []
    for record in trainer.records():
        if not isinstance(record, PromptRecord):
            raise DumaError(f"data source '{d.source}' gives {type(record).__name__} records; "
                            f"method '{trainer.config.method}' trains on prompts", "use data.source: prompts")
        messages = [m.model_dump() for m in record.messages]
        ids = render_prompt_ids(tokenizer, messages)
        if len(ids) > room:
            if d.overlong == "skip":
                trainer.data_counts.skipped_overlong += 1
                continue
            trainer.data_counts.truncated += 1
            ids = ids[-room:]  # keep the end: the question and the generation prompt
        rows.append(PromptRow(ids, messages, record.answer, [len(rows)]))
    return rows


class GRPOTrainer(LoraPolicyTrainer):
    """Reinforcement learning with verifiable rewards, group-relative advantages."""

    name = "grpo"
    config_class = GRPOConfig
    description = "GRPO with verifiable rewards from reward plugins (full or LoRA policy)"
    repack = False

    def __init__(self, config: RunConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.settings: GRPOSettings = config.grpo  # type: ignore[attr-defined]
        self.rewards = self.load_rewards()
        self.reference: Any = None

    def load_rewards(self) -> list[tuple[str, float, Any]]:
        """``(name, weight, reward)`` for each configured reward (unknown names fail here,
        before any work)."""
        from duma import host

        weights = self.settings.reward_weights or [1.0] * len(self.settings.rewards)
        out = []
        for name, weight in zip(self.settings.rewards, weights):
            obj = host.get("reward", name)
            reward = obj() if isinstance(obj, type) else obj
            if not callable(getattr(reward, "score", None)):
                raise ConfigError(f"reward '{name}' has no score(prompt_messages, completion, answer) method",
                                  "fix the plugin that registers it")
            out.append((name, weight, reward))
        return out

    # --- data

    def build_samples(self, tokenizer: Any) -> list[PromptRow]:  # type: ignore[override]
        return prompt_rows(self, tokenizer, self.settings.max_new_tokens)

    def collate(self, rows: Sequence[PromptRow], pad_id: int) -> dict[str, Any]:  # type: ignore[override]
        return {ROWS_KEY: list(rows)}

    def loss_weight(self, batch: dict[str, Any]) -> int:
        return len(batch[ROWS_KEY])  # the eval loss and metrics are means over prompts

    # --- model and reference

    def on_engine_ready(self, engine: Any, bar: PhaseBar) -> None:
        """Keep the starting model as the KL reference (only with ``kl_beta``): a fresh LoRA
        policy's reference is its base with the adapter switched off; a full policy's, or one
        that continues an adapter, a frozen copy made now, before a resumed run loads its
        checkpoint."""
        if not self.settings.kl_beta or (self.lora is not None and self.start_adapter is None):
            return
        self.reference = copy.deepcopy(engine.module).eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)

    # --- sampling

    def sample(self, engine: Any, rows: Sequence[PromptRow], seed: int) -> dict[str, torch.Tensor]:
        """``group_size`` completions per row from the current policy: the padded sequences
        (prompts left-padded, completions right-padded), their attention mask and position
        ids, the completion mask (through the first end-of-sequence token) and the prompt
        width."""
        import torch

        g, s = self.settings.group_size, self.settings
        module = engine.module
        device = next(module.parameters()).device
        pad_id = self.tokenizer.pad_token_id
        width = max(len(r.prompt_ids) for r in rows)
        prompts = torch.full((len(rows) * g, width), pad_id, dtype=torch.long)
        prompt_mask = torch.zeros_like(prompts)
        for i, row in enumerate(rows):
            n = len(row.prompt_ids)
            prompts[i * g:(i + 1) * g, width - n:] = torch.tensor(row.prompt_ids)
            prompt_mask[i * g:(i + 1) * g, width - n:] = 1
        prompts, prompt_mask = prompts.to(device), prompt_mask.to(device)
        stop_ids = self.stop_ids(module)
        with sampling_mode(module, seed):
            out = module.generate(input_ids=prompts, attention_mask=prompt_mask, do_sample=True,
                                  temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                  max_new_tokens=s.max_new_tokens, min_new_tokens=0,
                                  eos_token_id=stop_ids, pad_token_id=pad_id, use_cache=True)
        completions = out[:, width:]
        is_stop = torch.isin(completions, torch.tensor(stop_ids, device=completions.device))
        # Through the first stop token (it is trained: the model learns to end); none: all of it.
        first = torch.where(is_stop.any(-1), is_stop.int().argmax(-1), completions.shape[1])
        positions = torch.arange(completions.shape[1], device=completions.device)
        completion_mask = (positions[None, :] <= first[:, None]).long()
        attention = torch.cat([prompt_mask, completion_mask], dim=1)
        return {"sequences": out, "attention_mask": attention,
                "position_ids": (attention.cumsum(-1) - 1).clamp(min=0),
                "completion_mask": completion_mask, "prompt_width": torch.tensor(width),
                "ended": is_stop.any(-1)}

    def tool_runner(self) -> Any:
        """A model-less SlowMind whose ``run_tool`` runs an action exactly as inference does."""
        if getattr(self, "_tool_runner", None) is None:
            from duma.agents.agent import tool_runner

            self._tool_runner = tool_runner(self.settings.knowledge_dir)
        return self._tool_runner

    def sample_with_tools(self, engine: Any, rows: Sequence[PromptRow], seed: int) -> dict[str, Any]:
        """``sample`` with the tools in the loop (``run_tools``): each completion is sampled turn
        by turn; after a turn with ``Act[...]`` the tool runs and its ``Obs[...]`` user turn (as
        the one renderer writes it) is appended, untrained, before the next turn. Also returns
        ``loss_mask`` (the model's own tokens) and ``texts`` (each trace as the protocol writes
        it, for the rewards)."""
        import torch

        from duma.agents import protocol
        from duma.rendering import text_after_reply

        s, g = self.settings, self.settings.group_size
        module = engine.module
        device = next(module.parameters()).device
        pad_id = self.tokenizer.pad_token_id
        stop_ids = self.stop_ids(module)
        eos_text = self.tokenizer.decode(stop_ids[:1])
        runner = self.tool_runner()
        traces: list[tuple[list[int], list[int], list[int], str, bool]] = []
        with sampling_mode(module, seed):
            for row in rows:
                for _ in range(g):
                    completion: list[int] = []
                    trained: list[int] = []
                    parts: list[str] = []
                    messages = list(row.messages)
                    ended = False
                    for _turn in range(s.tool_rounds):
                        budget = s.max_new_tokens - len(completion)
                        if budget <= 0:
                            break
                        ids = torch.tensor([row.prompt_ids + completion], device=device)
                        out = module.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                              temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                              max_new_tokens=budget, min_new_tokens=0, eos_token_id=stop_ids,
                                              pad_token_id=pad_id, use_cache=True)
                        new = out[0, ids.shape[1]:].tolist()
                        stop = next((i for i, t in enumerate(new) if t in stop_ids), None)
                        new = new if stop is None else new[:stop + 1]
                        completion += new
                        trained += [1] * len(new)
                        text = self.tokenizer.decode(new if stop is None else new[:-1], skip_special_tokens=True)
                        parts.append(text.strip())
                        step = protocol.parse_slow(text)
                        if stop is None or step.action is None:
                            ended = stop is not None  # Finish (or garbled): the trace is over
                            break
                        observation = protocol.format_observation(runner.run_tool(step.action))
                        follow = text_after_reply(self.tokenizer, messages, text, observation, eos_text)
                        follow_ids = self.tokenizer(follow, add_special_tokens=False)["input_ids"]
                        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": observation}]
                        completion += follow_ids
                        trained += [0] * len(follow_ids)
                        parts.append(observation)
                    traces.append((row.prompt_ids, completion, trained, "\n".join(parts), ended))
        width = max(len(r.prompt_ids) for r in rows)
        longest = max(1, max(len(t[1]) for t in traces))
        n = len(traces)
        sequences = torch.full((n, width + longest), pad_id, dtype=torch.long)
        attention = torch.zeros_like(sequences)
        completion_mask = torch.zeros((n, longest), dtype=torch.long)
        loss_mask = torch.zeros((n, longest), dtype=torch.long)
        for k, (prompt, completion, trained, _, _) in enumerate(traces):
            sequences[k, width - len(prompt):width] = torch.tensor(prompt)
            attention[k, width - len(prompt):width + len(completion)] = 1
            if completion:
                sequences[k, width:width + len(completion)] = torch.tensor(completion)
                completion_mask[k, :len(completion)] = 1
                loss_mask[k, :len(completion)] = torch.tensor(trained)
        return {"sequences": sequences.to(device), "attention_mask": attention.to(device),
                "position_ids": (attention.cumsum(-1) - 1).clamp(min=0).to(device),
                "completion_mask": completion_mask.to(device), "loss_mask": loss_mask.to(device),
                "prompt_width": torch.tensor(width), "ended": torch.tensor([t[4] for t in traces]),
                "texts": [t[3] for t in traces]}

    def stop_ids(self, module: Any) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(module, "generation_config", None), "eos_token_id", None)
        ids |= set(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)

    def score(self, rows: Sequence[PromptRow], texts: Sequence[str]) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted total reward of each completion, and each reward's mean."""
        import torch

        g = self.settings.group_size
        total = torch.zeros(len(texts))
        means = {}
        for name, weight, reward in self.rewards:
            try:
                values = torch.tensor([float(reward.score(rows[k // g].messages, text, rows[k // g].answer))
                                       for k, text in enumerate(texts)])
            except Exception as exc:  # a plugin's bug or a bad answer: name the reward, not a traceback
                raise DumaError(f"reward '{name}' failed ({first_line(exc, with_type=True)})",
                                "check the records' answers, or fix the plugin that registers it") from exc
            means[f"reward/{name}"] = float(values.mean())
            total += weight * values
        return total, means

    # --- the loss

    def token_logps(self, model: Any, sampled: dict[str, torch.Tensor]) -> torch.Tensor:
        """Log-probs of the completion tokens, at the sampling temperature, in float32."""
        width = int(sampled["prompt_width"])
        seq = sampled["sequences"]
        logits = model(input_ids=seq, attention_mask=sampled["attention_mask"],
                       position_ids=sampled["position_ids"], use_cache=False).logits
        logits = logits[:, width - 1:-1].float() / self.settings.temperature
        targets = seq[:, width:]
        return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)

    def reference_logps(self, engine: Any, sampled: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        with torch.no_grad():
            if self.reference is not None:
                return self.token_logps(self.reference, sampled)
            with engine.module.disable_adapter():  # LoRA: the base is the reference
                return self.token_logps(engine, sampled)

    def compute_loss(self, engine: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        import torch

        s = self.settings
        rows: list[PromptRow] = batch[ROWS_KEY]
        kind = "train" if torch.is_grad_enabled() else "eval"  # evaluate() runs under no_grad
        seed = sampling_seed(self.config.training.seed, kind, int(engine.global_steps),
                             [i for r in rows for i in r.ids])
        sampled = (self.sample_with_tools if s.run_tools else self.sample)(engine, rows, seed)
        width = int(sampled["prompt_width"])
        completion_ids = sampled["sequences"][:, width:].cpu()
        cmask = sampled["completion_mask"]
        lengths = cmask.sum(-1).cpu()
        ended = sampled["ended"].cpu()
        if "texts" in sampled:  # tools in the loop: their observations were never the model's
            texts, keep = sampled["texts"], sampled["loss_mask"]
        else:
            texts, keep = [], torch.ones_like(cmask)
            for k in range(completion_ids.shape[0]):
                ids = completion_ids[k, :int(lengths[k])].tolist()
                body = ids[:-1] if bool(ended[k]) else ids  # the text the rewards see: no stop token
                texts.append(self.tokenizer.decode(body, skip_special_tokens=True))
                if s.mask_observations:
                    keep[k, :len(ids)] = torch.tensor(observation_mask(self.tokenizer, ids), dtype=keep.dtype)
        rewards, reward_means = self.score(rows, texts)
        advantages = group_advantages(rewards, s.group_size, s.scale_rewards).to(cmask.device)
        mask = (cmask * keep).float()

        logps = self.token_logps(engine, sampled)
        old = logps.detach()  # one pass per generation: the sampling-time log-probs
        ratio = torch.exp(logps - old)
        adv = advantages[:, None]
        clipped = torch.clamp(ratio, 1 - s.clip_eps, 1 + s.clip_eps)
        per_token = -torch.min(ratio * adv, clipped * adv)
        metrics: dict[str, float] = {}
        if s.kl_beta:
            ref = self.reference_logps(engine, sampled)
            delta = ref - logps
            kl = torch.exp(delta) - delta - 1  # k3: unbiased, always >= 0
            per_token = per_token + s.kl_beta * kl
            metrics["kl"] = float((kl.detach() * mask).sum() / mask.sum().clamp(min=1))
        if s.loss_aggregation == "sequence":
            loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
        else:
            loss = (per_token * mask).sum() / mask.sum().clamp(min=1)

        grouped = rewards.view(-1, s.group_size)
        metrics.update({
            "reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            **reward_means,
            "advantage/std": float(advantages.std()) if len(advantages) > 1 else 0.0,
            "advantage/abs_mean": float(advantages.abs().mean()),
            "groups/no_signal": float((grouped.std(-1) == 0).float().mean()),
            "completion/length": float(lengths.float().mean()),
            "completion/unfinished": float((~ended).float().mean()),
            "completion/masked_tokens": float((cmask * (1 - keep)).sum()),
            "clip_ratio": float((((ratio - 1).abs() > s.clip_eps).float() * mask).sum() / mask.sum().clamp(min=1)),
        })
        return loss, metrics

    # --- result

