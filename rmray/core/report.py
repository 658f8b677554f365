"""The data report: what happened to every input row, printed and saved with the run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .files import write_json_atomic

MAX_SAMPLES_PER_REASON = 5


@dataclass
class DataReport:
    name: str
    rows_read: int = 0
    rows_kept: int = 0
    pairs: int = 0
    """Pairs the kept rows make: one per row, every ordered pair of different ratings for a rated row."""
    rows_truncated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    """Up to five ``row <id>: <message>`` strings per skip reason, to find the rows."""
    tokens: int = 0
    """Real (unpadded) tokens over all kept pairs, chosen plus rejected."""
    shared_prefix_tokens: int = 0
    """Tokens a row's responses share at their start beyond the first copy: the shared-prompt layout
    computes them once instead of once per response."""

    def add_skip(self, reason: str, row_id, message: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        samples = self.samples.setdefault(reason, [])
        if len(samples) < MAX_SAMPLES_PER_REASON:
            samples.append(f"row {row_id}: {message}")

    def format(self) -> str:
        lines = [
            f"data report [{self.name}]: {self.rows_read} rows read, {self.rows_kept} kept "
            + (f"as {self.pairs} pairs " if self.pairs != self.rows_kept else "") +
            f"({self.rows_truncated} truncated), {sum(self.skipped.values())} skipped, {self.tokens} tokens "
            f"({self.shared_prefix_tokens} of them repeated prompt tokens, computed once where prompts are shared)"
        ]
        for reason, count in sorted(self.skipped.items()):
            lines.append(f"  skipped {count:>6} {reason}: e.g. " + "; ".join(self.samples.get(reason, [])[:2]))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str) -> None:
        write_json_atomic(path, self.to_dict())
