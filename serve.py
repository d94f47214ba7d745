"""Serve transcriptions over HTTP and WebSocket: python serve.py -c CONFIG --checkpoint CKPT [--host 127.0.0.1] [--port 8000]

Endpoints: GET / (a page to upload a file or record from the microphone), GET /health (the model's
description), POST /transcribe (an audio file -> JSON transcript with word times), WebSocket
/stream (16-bit PCM in, partial and final transcripts out). --checkpoint may be an http(s) URL.
Listens on 127.0.0.1 only unless --host says otherwise.
"""
import errno
import logging
import socket
import sys
from typing import Optional, Sequence

from mindaudio.cli import (CommandLineError, add_checkpoint_argument, checkpoint_override, parse_command_line,
                           require_model_weights, run_cli)

DESCRIPTION = "Transcription server: an upload and live-microphone page, a JSON API and a WebSocket stream."


def own_arguments(parser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument("--max_upload_mb", type=float, default=20.0,
                        help="largest upload, in MiB (default: %(default)s)")
    parser.add_argument("--max_seconds", type=float, default=120.0,
                        help="longest audio of one upload or live stream (default: %(default)s)")
    parser.add_argument("--max_batch", type=int, default=8,
                        help="requests run together in one model batch at most (default: %(default)s)")
    parser.add_argument("--batch_wait_ms", type=float, default=5.0,
                        help="how long the worker waits for more requests to batch (default: %(default)s)")
    parser.add_argument("--partial_interval", type=float, default=1.0,
                        help="live streams: seconds between partial transcripts at least (default: %(default)s)")
    parser.add_argument("--chunk_seconds", type=float, default=20.0,
                        help="longer audio is cut into chunks of this length (default: %(default)s)")
    parser.add_argument("--context_seconds", type=float, default=2.0,
                        help="audio each chunk also sees on either side (default: %(default)s)")
    parser.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="server log level (default: %(default)s)")


def check_port(host: str, port: int) -> None:
    """CommandLineError naming --host/--port unless the address can be listened on."""
    if not 0 <= port <= 65535:
        raise CommandLineError(f"--port {port}: not a port number (0-65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise CommandLineError(f"--host {host}: {err.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            why = "already in use" if err.errno == errno.EADDRINUSE else err.strerror
            raise CommandLineError(f"--host {host} --port {port}: cannot listen there: {why}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    config, args = parse_command_line(argv, DESCRIPTION, own_arguments, single_process=True,
                                      derived_overrides=checkpoint_override)
    require_model_weights(config, "EvalConfig.lm_path", "EvalConfig.lm_unigrams")
    for flag in ("max_upload_mb", "max_seconds", "max_batch", "partial_interval"):
        if getattr(args, flag) <= 0:
            raise CommandLineError(f"--{flag} must be positive, got {getattr(args, flag)}")
    if args.batch_wait_ms < 0:
        raise CommandLineError(f"--batch_wait_ms must not be negative, got {args.batch_wait_ms}")
    check_port(args.host, args.port)
    from mindaudio.inference import ChunkGeometry

    try:
        ChunkGeometry.from_seconds(config.SpectConfig, args.chunk_seconds, args.context_seconds)
    except ValueError as err:
        raise CommandLineError(f"--{err}") from None

    import uvicorn

    from mindaudio.runtime.device import choose_device, setup_runtime
    from mindaudio.serving.app import create_app
    from mindaudio.serving.audio import Limits
    from mindaudio.serving.service import build_service

    runtime = setup_runtime(config.runtime, config.TrainingConfig.seed,
                            log=lambda line: print(line, file=sys.stderr))
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_seconds=args.max_seconds)
    service = build_service(config, config.Pretrained_model, choose_device(config.runtime.device_target)[0],
                            limits=limits, max_batch=args.max_batch, batch_wait=args.batch_wait_ms / 1000,
                            partial_interval=args.partial_interval, chunk_seconds=args.chunk_seconds,
                            context_seconds=args.context_seconds, compile_cache_dir=runtime.compile_cache_dir)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    print(f"serving {config.Pretrained_model} on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=args.host, port=args.port,
                                           ws_max_size=limits.max_message_bytes, log_level=args.log_level,
                                           timeout_graceful_shutdown=5))
    server.run()
    return 0


if __name__ == "__main__":
    run_cli(main)
