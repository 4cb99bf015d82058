"""Helpers shared by test modules (conftest.py holds only fixtures; its module name is not unique)."""

from __future__ import annotations

from comfy_double import ComfyDouble

from tenexa.comfy import ComfyClient
from tenexa.config import load_settings


def settings_for(double: ComfyDouble, **env: str):
    base = {
        "COMFY_ROOT": str(double.root),
        "COMFY_PORT": str(double.port),
        "SERVER_ADDRESS": "127.0.0.1",
        "COMFY_READY_TIMEOUT": "2",
        "COMFY_EXEC_TIMEOUT": "20",
        "VOLUME_ROOT": str(double.root / "no-volume"),
    }
    base.update(env)
    return load_settings(base)


class RecordingClient(ComfyClient):
    """A real ComfyClient that keeps each graph it submitted and each PromptResult (the WebSocket timeline)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graphs: list[dict] = []
        self.results = []

    def run_prompt(self, graph, *args, **kwargs):
        self.graphs.append(graph)
        result = super().run_prompt(graph, *args, **kwargs)
        self.results.append(result)
        return result

    def ran(self, class_type: str) -> bool:
        """Whether a node of ``class_type`` executed in the last prompt (ComfyUI sent ``executing`` for it)."""
        nodes = {node for _, node in self.results[-1].timeline if node}
        return any(spec["class_type"] == class_type for node_id, spec in self.graphs[-1].items() if node_id in nodes)

