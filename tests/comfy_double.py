"""A ComfyUI test double that speaks the recorded ComfyUI 0.8.0 protocol, for what real ComfyUI can't do on demand.

It follows `shared/reference/comfyui-protocol.md` and the traces in `comfyui-data/`: the same routes, the
same WebSocket message order (status → execution_start → execution_cached → executing/progress → executed →
execution_success → status → executing{node:null}), the same history shape, the recorded 400 bodies, the
same /view rules. Its job is the faults: hangs, crashes, dropped sockets, rejected prompts, missing outputs.
Outputs are real MP4s (PyAV), written into a real folder tree like ComfyUI's, so cleanup can be checked.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from aiohttp import web
from PIL import Image

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "comfyui"


def reference_json(name: str) -> Any:
    return json.loads((REFERENCE / name).read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_mp4(path: Path, frames: int, width: int, height: int, fps: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
        for i in range(frames):
            img = Image.new("RGB", (stream.width, stream.height), ((i * 25) % 255, 80, 160))
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@dataclass
class Behaviour:
    """What the double does with the next prompts. ``mode`` is one of:
    success, reject (400 with ``reject_body``), error (runtime execution_error), hang (runs until interrupted),
    drop (closes the socket mid-run, finishes while the client is away), no_output, crash (the server dies
    mid-run), slow (success after ``delay`` seconds).
    """

    mode: str = "success"
    reject_body: dict | None = None
    delay: float = 0.0
    node_seconds: float = 0.01


@dataclass
class Calls:
    prompts: list[dict] = field(default_factory=list)
    interrupts: list[Any] = field(default_factory=list)
    queue_deletes: list[Any] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    object_info: int = 0


class ComfyDouble:
    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        for sub in ("input", "output", "temp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.behaviour = Behaviour()
        self.object_info_body: dict = reference_json("object_info_filtered.json")
        self.calls = Calls()
        self.history: dict[str, dict] = {}
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self._interrupted: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ----------------------------------------------------------------------------------- lifecycle

    def start(self) -> ComfyDouble:
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("ComfyDouble did not start")
        return self

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.add_routes([
            web.get("/system_stats", self.system_stats),
            web.get("/object_info", self.object_info),
            web.post("/upload/image", self.upload),
            web.post("/prompt", self.prompt),
            web.get("/ws", self.ws),
            web.get("/history/{pid}", self.get_history),
            web.get("/view", self.view),
            web.post("/interrupt", self.interrupt),
            web.post("/queue", self.queue),
        ])
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if self._loop is None or not self._loop.is_running():
            return

        async def _shutdown() -> None:
            for ws in list(self.sockets.values()):
                await ws.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(_shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -------------------------------------------------------------------------------------- routes

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(reference_json("get_system_stats.json")["json"])

    async def object_info(self, request: web.Request) -> web.Response:
        self.calls.object_info += 1
        return web.json_response(self.object_info_body)

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        image = form.get("image")
        if image is None or not hasattr(image, "file"):
            return web.Response(status=400)
        subfolder = str(form.get("subfolder", ""))
        target_dir = (self.root / "input" / subfolder).resolve()
        if not str(target_dir).startswith(str((self.root / "input").resolve())):
            return web.Response(status=400)
        target_dir.mkdir(parents=True, exist_ok=True)
        (target_dir / image.filename).write_bytes(image.file.read())
        self.calls.uploads.append(f"{subfolder}/{image.filename}" if subfolder else image.filename)
        return web.json_response({"name": image.filename, "subfolder": subfolder, "type": "input"})

    async def prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
        if "prompt" not in body:
            return web.json_response(reference_json("err_b7_no_prompt_key.json")["response"]["json"], status=400)
        self.calls.prompts.append(body)
        if self.behaviour.mode == "reject":
            return web.json_response(self.behaviour.reject_body, status=400)
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        asyncio.get_running_loop().create_task(self._execute(prompt_id, body["prompt"], body.get("client_id")))
        return web.json_response({"prompt_id": prompt_id, "number": len(self.calls.prompts) - 1, "node_errors": {}})

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}})
        async for _msg in ws:
            pass
        if self.sockets.get(sid) is ws:
            del self.sockets[sid]
        return ws

    async def get_history(self, request: web.Request) -> web.Response:
        pid = request.match_info["pid"]
        return web.json_response({pid: self.history[pid]} if pid in self.history else {})

    async def view(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        filename, subfolder, kind = q.get("filename", ""), q.get("subfolder", ""), q.get("type", "output")
        if kind not in ("output", "input", "temp") or filename.startswith("/") or ".." in filename:
            return web.Response(status=400)
        if ".." in subfolder.split("/"):
            return web.Response(status=403)
        path = self.root / kind / subfolder / filename
        if not path.is_file():
            return web.Response(status=404)
        return web.FileResponse(path)

    async def interrupt(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.calls.interrupts.append(body)
        if body and body.get("prompt_id"):
            self._interrupted.add(body["prompt_id"])
        else:
            self._interrupted.add("*")
        return web.Response(status=200)

    async def queue(self, request: web.Request) -> web.Response:
        self.calls.queue_deletes.append(await request.json())
        return web.Response(status=200)

    # ---------------------------------------------------------------------------------- execution

    async def _send(self, client_id: str | None, kind: str, data: dict) -> None:
        ws = self.sockets.get(client_id or "")
        if ws is not None and not ws.closed:
            try:
                await ws.send_json({"type": kind, "data": data})
            except ConnectionError:
                pass

    async def _execute(self, pid: str, graph: dict, client_id: str | None) -> None:
        b = self.behaviour
        now_ms = lambda: int(time.time() * 1000)  # noqa: E731
        send = lambda kind, data: self._send(client_id, kind, {**data, "prompt_id": pid})  # noqa: E731
        messages: list = []
        await self._send(client_id, "status", {"status": {"exec_info": {"queue_remaining": 1}}})
        await send("execution_start", {"timestamp": now_ms()})
        messages.append(["execution_start", {"prompt_id": pid, "timestamp": now_ms()}])
        await send("execution_cached", {"nodes": [], "timestamp": now_ms()})
        order = list(graph)
        if b.delay:
            await asyncio.sleep(b.delay)
        for i, node_id in enumerate(order):
            await send("executing", {"node": node_id, "display_node": node_id})
            await asyncio.sleep(b.node_seconds)
            if b.mode == "drop" and i == len(order) // 2:
                ws = self.sockets.pop(client_id or "", None)
                if ws is not None:
                    await ws.close()
            if b.mode == "crash" and i == len(order) // 2:
                asyncio.get_running_loop().call_soon(lambda: threading.Thread(target=self.stop, daemon=True).start())
                return
            if b.mode == "error" and i == len(order) - 1:
                err = reference_json("err_d_runtime_corrupt_image.json")
                data = next(m["data"] for m in err["ws_messages"] if m.get("type") == "execution_error")
                data = {**data, "prompt_id": pid, "node_id": node_id, "node_type": graph[node_id]["class_type"]}
                await send("execution_error", data)
                messages.append(["execution_error", data])
                self._finish(pid, graph, client_id, "error", {}, messages)
                await self._send(client_id, "status", {"status": {"exec_info": {"queue_remaining": 0}}})
                await send("executing", {"node": None})
                return
            if b.mode == "hang" and i == len(order) - 1:
                while pid not in self._interrupted and "*" not in self._interrupted:
                    await send("progress", {"value": 0, "max": 10, "node": node_id})
                    await asyncio.sleep(0.2)
                data = {"prompt_id": pid, "node_id": node_id, "node_type": graph[node_id]["class_type"], "executed": order[:i], "timestamp": now_ms()}
                await send("execution_interrupted", data)
                messages.append(["execution_interrupted", data])
                self._finish(pid, graph, client_id, "error", {}, messages)
                await self._send(client_id, "status", {"status": {"exec_info": {"queue_remaining": 0}}})
                await send("executing", {"node": None})
                return
            await send("progress", {"value": 1, "max": 1, "node": node_id})
        outputs = {} if b.mode == "no_output" else self._write_outputs(graph)
        for node_id, output in outputs.items():
            await send("executed", {"node": node_id, "display_node": node_id, "output": output})
        await send("execution_success", {"timestamp": now_ms()})
        messages.append(["execution_success", {"prompt_id": pid, "timestamp": now_ms()}])
        self._finish(pid, graph, client_id, "success", outputs, messages)
        await self._send(client_id, "status", {"status": {"exec_info": {"queue_remaining": 0}}})
        await send("executing", {"node": None})

    def _finish(self, pid: str, graph: dict, client_id: str | None, status: str, outputs: dict, messages: list) -> None:
        self.history[pid] = {
            "prompt": [len(self.history), pid, graph, {"client_id": client_id}, [n for n in outputs]],
            "outputs": outputs,
            "status": {"status_str": status, "completed": status == "success", "messages": messages},
            "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in outputs},
        }

    @staticmethod
    def _literal(graph: dict, value: Any) -> Any:
        if isinstance(value, list) and len(value) == 2 and str(value[0]) in graph:
            src = graph[str(value[0])]
            return src.get("inputs", {}).get("value")
        return value

    def _write_outputs(self, graph: dict) -> dict:
        frames, width, height = 9, 64, 64
        for node in graph.values():
            inputs = node.get("inputs", {})
            for key in ("num_frames", "amount"):
                if isinstance(self._literal(graph, inputs.get(key)), int):
                    frames = self._literal(graph, inputs[key])
            if node.get("class_type") in ("WanVideoImageToVideoEncode", "ImageScale"):
                width = int(self._literal(graph, inputs.get("width")) or width)
                height = int(self._literal(graph, inputs.get("height")) or height)
        outputs = {}
        for node_id, node in graph.items():
            if node.get("class_type") in ("SaveImage", "SaveVideo"):
                outputs[node_id] = self._write_core_output(node, frames, width, height)
            if node.get("class_type") != "VHS_VideoCombine":
                continue
            inputs = node["inputs"]
            prefix = inputs.get("filename_prefix", "AnimateDiff")
            subfolder, _, stem = prefix.rpartition("/")
            kind = "output" if inputs.get("save_output", True) else "temp"
            fps = float(inputs.get("frame_rate", 8))
            name = f"{stem}_00001.mp4"
            path = self.root / kind / subfolder / name
            write_mp4(path, frames, width, height, fps)
            (path.with_suffix(".png")).write_bytes(b"\x89PNG\r\n\x1a\n")
            outputs[node_id] = {"gifs": [{"filename": name, "subfolder": subfolder, "type": kind, "format": "video/h264-mp4",
                                          "frame_rate": fps, "workflow": name[:-4] + ".png", "fullpath": str(path)}]}
        return outputs

    def _write_core_output(self, node: dict, frames: int, width: int, height: int) -> dict:
        """SaveImage (one PNG) and core SaveVideo (an MP4 reported as ``images`` + ``animated``, as recorded in
        run_core_video.json); names follow folder_paths.get_save_image_path: ``<prefix>_<counter:05>_.<ext>``."""
        prefix = node["inputs"].get("filename_prefix", "ComfyUI")
        subfolder, _, stem = prefix.rpartition("/")
        if node["class_type"] == "SaveVideo":
            name = f"{stem}_00001_.mp4"
            write_mp4(self.root / "output" / subfolder / name, frames, width, height, 8.0)
            return {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": [True]}
        name = f"{stem}_00001_.png"
        path = self.root / "output" / subfolder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (width, height), (200, 80, 40)).save(path)
        return {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}]}
