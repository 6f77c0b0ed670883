"""A plugin module for skel to dispatch to while fuzzing: every verb parses what the real
plugins parse (the bridge and host-local configs, CNI_ARGS, prevResult) and touches
nothing (no kernel, no store, no delegate)."""

from __future__ import annotations

from node_plugin.bridge import config as bridge_config
from node_plugin.cni.request import BRIDGE
from node_plugin.cni.result import Result
from node_plugin.cni.skel import CmdArgs
from node_plugin.ipam import config as hostlocal_config


def _parse(args: CmdArgs) -> Result:
    if args.plugin == BRIDGE:
        conf = bridge_config.load(args.config, args.args)
        if conf.ipam_type == "cniwarden-host-local":
            hostlocal_config.load(args.config, args.args, args.version, ("MAC",))
    else:
        hostlocal_config.load(args.config, args.args, args.version)
    raw = args.config.get("prevResult")
    return Result.from_json(raw, args.version) if raw is not None else Result()


def add(args: CmdArgs) -> Result:
    return _parse(args)


def delete(args: CmdArgs) -> None:
    _parse(args)


def check(args: CmdArgs) -> None:
    _parse(args)


def gc(args: CmdArgs) -> None:
    _parse(args)
    args.valid_attachments()


def status(args: CmdArgs) -> None:
    _parse(args)
