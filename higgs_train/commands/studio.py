"""``ray_jobs/studio.py``: serve the Studio page and its JSON API (the app lives in ``higgs_train.studio``)."""

from __future__ import annotations

import sys

import uvicorn

from higgs_train.flag_parser import FlagParser
from higgs_train.studio.app import StudioSettings, create_app


def build_parser() -> FlagParser:
    parser = FlagParser(prog="ray_jobs/studio.py", description="Serve the Studio page and its JSON API.")
    parser.add_argument(
        "--host", default="127.0.0.1", help="Address to listen on (another than loopback needs --auth)."
    )
    parser.add_argument("--port", type=int, default=7860, help="Port to listen on.")
    parser.add_argument("--data_root", default="data", help="Recordings and data sets: the only folder browsed.")
    parser.add_argument("--output_root", default="outputs", help="Runs, the MLflow store, exports, Studio jobs.")
    parser.add_argument("--ray_address", default="", help="Submit jobs to this Ray job server (http://HEAD:8265).")
    parser.add_argument("--auth", default="", help="Token every request must carry (required off loopback).")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = StudioSettings(args.data_root, args.output_root, args.host, args.port, args.ray_address, args.auth)
    try:
        app = create_app(settings, warm=True)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    roots = app.state.roots
    where = f"http://{args.host}:{args.port}/" + ("?token=<the --auth value>" if args.auth else "")
    print(f"Studio on {where} (data: {roots.data}, outputs: {roots.output}"
          f"{', jobs on Ray at ' + args.ray_address if args.ray_address else ''})")  # fmt: skip
    print("authentication: every request must carry the --auth token" if args.auth else
          "authentication: none (loopback only; forward the port to reach it from elsewhere)", flush=True)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
