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

from tenexa.validator import load_object_info

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "comfyui"


def reference_json(name: str) -> Any:
    return json.loads((REFERENCE / name).read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# VHS formats the double can write: (extension, encoder, pixel format), as VHS's video_formats/*.json do.
VHS_FORMATS = {
    "video/h264-mp4": ("mp4", "libx264", "yuv420p"),
    "video/h265-mp4": ("mp4", "libx265", "yuv420p"),
    "video/webm": ("webm", "libvpx-vp9", "yuv420p"),
    "video/ffv1-mkv": ("mkv", "ffv1", "bgra"),
}


def frame_image(index: int, width: int, height: int) -> Image.Image:
    """The double's frame ``index``: a colour that changes from frame to frame."""
    return Image.new("RGB", (width, height), ((index * 25) % 255, 80, 160))


def write_mp4(path: Path, frames: int, width: int, height: int, fps: float, encoder: str = "libx264", pix_fmt: str = "yuv420p") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, pix_fmt
        if encoder == "libx265":
            stream.options = {"x265-params": "log-level=quiet"}
        for i in range(frames):
            img = frame_image(i, stream.width, stream.height)
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@dataclass
class Behaviour:
    """What the double does with the next prompts. ``mode`` is one of:
    success, reject (400 with ``reject_body``), error (runtime execution_error), hang (runs until interrupted),
    drop (closes the socket mid-run, finishes while the client is away), no_output, crash (the server dies
    mid-run), slow (success after ``delay`` seconds). ``at_node`` is where error and hang happen (default: the
    graph's last node).
    """

    mode: str = "success"
    reject_body: dict | None = None
    delay: float = 0.0
    node_seconds: float = 0.01
    at_node: str | None = None


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
        self.missing_classes: set[str] = set()  # classes /object_info/{class} denies (a pack not loaded)
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
            web.get("/object_info/{cls}", self.object_info_class),
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

    async def object_info_class(self, request: web.Request) -> web.Response:
        """One class, as ComfyUI answers ``/object_info/{class}``: ``{}`` for a class no loaded pack provides."""
        cls = request.match_info["cls"]
        info = {**reference_json("object_info_filtered.json"), **load_object_info()}
        return web.json_response({cls: info[cls]} if cls in info and cls not in self.missing_classes else {})

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
        order = self._execution_order(graph)
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
            at_fault = node_id == b.at_node if b.at_node is not None else i == len(order) - 1
            if b.mode == "error" and at_fault:
                err = reference_json("err_d_runtime_corrupt_image.json")
                data = next(m["data"] for m in err["ws_messages"] if m.get("type") == "execution_error")
                data = {**data, "prompt_id": pid, "node_id": node_id, "node_type": graph[node_id]["class_type"]}
                await send("execution_error", data)
                messages.append(["execution_error", data])
                self._finish(pid, graph, client_id, "error", {}, messages)
                await self._send(client_id, "status", {"status": {"exec_info": {"queue_remaining": 0}}})
                await send("executing", {"node": None})
                return
            if b.mode == "hang" and at_fault:
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

    @staticmethod
    def _execution_order(graph: dict) -> list[str]:
        """Nodes after the nodes they link to (as ComfyUI runs them), otherwise in the graph's own order."""
        deps = {n: {str(v[0]) for v in (spec.get("inputs") or {}).values() if isinstance(v, list) and len(v) == 2
                    and str(v[0]) in graph} for n, spec in graph.items() if isinstance(spec, dict)}
        order: list[str] = []
        done: set[str] = set()
        while len(order) < len(deps):
            ready = [n for n in deps if n not in done and deps[n] <= done]
            if not ready:  # a cycle (ComfyUI would refuse it): run the rest as listed
                ready = [n for n in deps if n not in done]
            order.extend(ready)
            done.update(ready)
        return order

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

    def _frames(self, graph: dict, link: Any, depth: int = 0) -> int:
        """How many frames the IMAGE batch at ``link`` has, following the nodes that make or cut batches."""
        node = graph.get(str(link[0])) if isinstance(link, list) and len(link) == 2 else None
        if node is None or depth > 64:
            return 9
        kind, inputs = node.get("class_type"), node.get("inputs", {})
        if kind == "WanVideoDecode":  # the frames its encode asked for: samples <- sampler <- image_embeds <- encode
            sampler = graph.get(str(inputs["samples"][0]), {})
            encode = graph.get(str(sampler.get("inputs", {}).get("image_embeds", [""])[0]), {})
            return int(self._literal(graph, encode.get("inputs", {}).get("num_frames")) or 9)
        if kind == "RepeatImageBatch":
            return int(self._literal(graph, inputs.get("amount")) or 1)
        if kind == "RIFE VFI":  # (n - 1) * m + 1, as the pack's frame loop makes
            return (self._frames(graph, inputs["frames"], depth + 1) - 1) * int(inputs["multiplier"]) + 1
        if kind == "ImageFromBatch":  # ComfyUI clamps the index and the length to the batch
            count = self._frames(graph, inputs["image"], depth + 1)
            index = min(count - 1, int(inputs["batch_index"]))
            return min(count - index, int(inputs["length"]))
        if kind == "ImageBatch":
            return self._frames(graph, inputs["image1"], depth + 1) + self._frames(graph, inputs["image2"], depth + 1)
        images = inputs.get("images", inputs.get("image", inputs.get("video")))
        return self._frames(graph, images, depth + 1) if images is not None else 9

    def _write_outputs(self, graph: dict) -> dict:
        width, height = 64, 64
        for node in graph.values():
            inputs = node.get("inputs", {})
            if node.get("class_type") in ("WanVideoImageToVideoEncode", "ImageScale"):
                width = int(self._literal(graph, inputs.get("width")) or width)
                height = int(self._literal(graph, inputs.get("height")) or height)
        outputs = {}
        for node_id, node in graph.items():
            inputs = node.get("inputs", {})
            if node.get("class_type") == "SaveVideo":
                outputs[node_id] = self._write_core_output(node, self._frames(graph, inputs.get("video")), width, height)
                continue
            prefix = inputs.get("filename_prefix", "ComfyUI" if node.get("class_type") == "SaveImage" else "AnimateDiff")
            subfolder, _, stem = prefix.rpartition("/")
            if node.get("class_type") == "SaveImage":  # one PNG: the last frame of the batch it gets
                name = f"{stem}_00001_.png"
                path = self.root / "output" / subfolder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                source = inputs.get("images")
                pick = graph.get(str(source[0]), {}) if isinstance(source, list) else {}
                last = self._frames(graph, pick.get("inputs", {}).get("image", source)) - 1
                frame_image(last, width + width % 2, height + height % 2).save(path)
                outputs[node_id] = {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}]}
                continue
            if node.get("class_type") != "VHS_VideoCombine":
                continue
            kind = "output" if inputs.get("save_output", True) else "temp"
            fps = float(inputs.get("frame_rate", 8))
            video_format = inputs.get("format", "video/h264-mp4")
            extension, encoder, pix_fmt = VHS_FORMATS[video_format]
            name = f"{stem}_00001.{extension}"
            path = self.root / kind / subfolder / name
            write_mp4(path, self._frames(graph, inputs.get("images")), width, height, fps, encoder, pix_fmt)
            (path.with_suffix(".png")).write_bytes(b"\x89PNG\r\n\x1a\n")
            outputs[node_id] = {"gifs": [{"filename": name, "subfolder": subfolder, "type": kind, "format": video_format,
                                          "frame_rate": fps, "workflow": name[:-len(extension) - 1] + ".png", "fullpath": str(path)}]}
        return outputs

    def _write_core_output(self, node: dict, frames: int, width: int, height: int) -> dict:
        """Core SaveVideo: an MP4 reported as ``images`` + ``animated``, as recorded in run_core_video.json; names
        follow folder_paths.get_save_image_path: ``<prefix>_<counter:05>_.<ext>``."""
        prefix = node["inputs"].get("filename_prefix", "ComfyUI")
        subfolder, _, stem = prefix.rpartition("/")
        name = f"{stem}_00001_.mp4"
        write_mp4(self.root / "output" / subfolder / name, frames, width, height, 8.0)
        return {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": [True]}
