"""Fault injection on cocotbext-axi's AXI slave (the rtl bench's DDR), as sw.backends.faults describes.

`AxiFaults(slave)` wraps the slave's R and B channels: once armed with (channel, n, resp), the n-th
R beat of the fetcher (id 0: channel "fetch") or of the data reads (other ids: "read"), or the
n-th B response ("write"), counted from the arming, answers `resp` (2 SLVERR, 3 DECERR) instead
of OKAY. One strike per arming.
"""


class AxiFaults:
    def __init__(self, slave):
        self.plan = None                 # (channel, n, resp)
        self.counts = {}
        self.struck = 0
        r, b = slave.read_if.r_channel, slave.write_if.b_channel
        r_send, b_send = r.send, b.send

        async def send_r(beat):
            self._answer(beat, "fetch" if int(beat.rid) == 0 else "read", "rresp")
            await r_send(beat)

        async def send_b(resp):
            self._answer(resp, "write", "bresp")
            await b_send(resp)

        r.send, b.send = send_r, send_b

    def arm(self, plan) -> None:
        """(channel, n, resp) or None (disarm)."""
        self.plan = tuple(plan) if plan is not None else None
        self.counts = dict(read=0, write=0, fetch=0)

    def _answer(self, txn, channel, field):
        if self.plan is None:
            return
        n = self.counts[channel]
        self.counts[channel] = n + 1
        want, beat, resp = self.plan
        if want == channel and n == beat:
            setattr(txn, field, resp)
            self.plan = None
            self.struck += 1
