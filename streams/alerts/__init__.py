"""Alerts for people: ``spendstream alerts tail`` and the one way an alert is shown in a terminal.

``pretty(alert)`` is the line ``alerts tail`` prints and the live display's alert pane shows;
``as_json(alert)`` is ``alerts tail --json``'s line; ``AlertTail`` follows the topic.
"""

from streams.alerts.format import as_json, pretty, utc_text, who
from streams.alerts.tail import AlertFilter, AlertTail

__all__ = ["AlertFilter", "AlertTail", "as_json", "pretty", "utc_text", "who"]
