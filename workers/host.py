"""The script host moved to porch.host (porch.testing runs scripts through it too, and porch
never imports workers); this name stays for code that imports it from here."""

from porch.host import Script, ScriptHost, load_script, user_traceback

__all__ = ["Script", "ScriptHost", "load_script", "user_traceback"]
