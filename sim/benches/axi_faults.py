"""Fault injection on cocotbext-axi's AXI slave (the rtl bench's DDR), as sw.backends.faults describes.

`AxiFaults(slave)` wraps the slave's R, W and B channels: once armed with (channel, n, resp), the
n-th R beat of the fetcher (id 0: channel "fetch") or of the data reads (other ids: "read"), or the
burst of the n-th W beat ("write": its B response), counted from the arming, answers `resp`
(2 SLVERR, 3 DECERR) instead of OKAY. One strike per arming.
"""


class AxiFaults:
    def __init__(self, slave):
        self.plan = None                 # (channel, n, resp)
        self.counts = {}
        self.struck = 0
        self.pending_b = None            # the error the current write burst's B response carries
        r, w, b = slave.read_if.r_channel, slave.write_if.w_channel, slave.write_if.b_channel
        r_send, w_recv, b_send = r.send, w.recv, b.send

        async def send_r(beat):
            resp = self._strike("fetch" if int(beat.rid) == 0 else "read")
            if resp is not None:
                beat.rresp = resp
            await r_send(beat)

        async def recv_w():
            beat = await w_recv()
            self.pending_b = self._strike("write") or self.pending_b
            return beat

        async def send_b(answer):
            if self.pending_b is not None:            # (the slave answers a burst after its last W beat)
                answer.bresp, self.pending_b = self.pending_b, None
            await b_send(answer)

        r.send, w.recv, b.send = send_r, recv_w, send_b

    def arm(self, plan) -> None:
        """(channel, n, resp) or None (disarm)."""
        self.plan = tuple(plan) if plan is not None else None
        self.counts = dict(read=0, write=0, fetch=0)

    def _strike(self, channel):
        """Count one beat of `channel`; the error response when it is the armed one, else None."""
        if self.plan is None:
            return None
        n = self.counts[channel]
        self.counts[channel] = n + 1
        want, beat, resp = self.plan
        if want == channel and n == beat:
            self.plan = None
            self.struck += 1
            return resp
        return None
