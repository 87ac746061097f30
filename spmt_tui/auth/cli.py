"""``spmt-tui login``, ``logout`` and ``whoami`` on the command line."""

from __future__ import annotations

import argparse

from spmt_tui.auth import commands


def add_commands(subcommands: argparse._SubParsersAction) -> None:
    login = subcommands.add_parser(
        "login", help="sign in and keep the tokens in the OS keyring or an encrypted file",
        description="Sign in with a device code (default), a certificate (app-only) or, as a "
        "legacy option, a username and password. The account is saved for later commands.")
    commands.add_login_arguments(login)
    login.set_defaults(handler=commands.run_login)
    logout = subcommands.add_parser("logout", help="forget a saved account and its tokens")
    commands.add_account_arguments(logout)
    logout.set_defaults(handler=commands.run_logout)
    whoami = subcommands.add_parser("whoami", help="show the signed-in account")
    commands.add_account_arguments(whoami, whoami=True)
    whoami.set_defaults(handler=commands.run_whoami)
