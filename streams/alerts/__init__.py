"""Alerts for people: ``spendstream alerts tail`` and the one way an alert is shown in a terminal.

``pretty(alert)`` is the line ``alerts tail`` prints and the live display's alert pane shows;
``as_json(alert)`` is ``alerts tail --json``'s line.
"""

from streams.alerts.format import as_json, pretty, utc_text, who

__all__ = ["as_json", "pretty", "utc_text", "who"]
