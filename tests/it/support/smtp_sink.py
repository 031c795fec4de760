"""An aiosmtpd handler that files every message it receives as one JSON file
in a directory: envelope, headers, and the decoded text and HTML parts.

Run by tests/it/support/smtp.rs as
    python -m aiosmtpd -n -l 127.0.0.1:PORT -c smtp_sink.Sink DIR
"""

import email
import json
import os
import time
from email import policy


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 1:
            parser.error("smtp_sink.Sink takes one argument: the directory")
        return cls(args[0])

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        text = html = None
        for part in msg.walk():
            kind = part.get_content_type()
            if kind == "text/plain" and text is None:
                text = part.get_content()
            elif kind == "text/html" and html is None:
                html = part.get_content()
        self.count += 1
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "subject": str(msg["subject"]),
            "content_type": msg.get_content_type(),
            "text": text,
            "html": html,
            "raw": envelope.content.decode("utf-8", "replace"),
        }
        name = "%020d-%06d.json" % (time.time_ns(), self.count)
        tmp = os.path.join(self.directory, "." + name)
        with open(tmp, "w") as f:
            json.dump(record, f)
        # Readers list the directory: a rename makes each file appear whole.
        os.rename(tmp, os.path.join(self.directory, name))
        return "250 Message accepted for delivery"
