// The peer of scripts/bench-peer.sh: the webhook endpoint a Sendblue guide suggests, in Express:
// check the shared secret header, drop a repeated message handle (an in-memory Set, so nothing
// survives a restart), answer 200 at once and leave the processing for later.
const crypto = require("crypto");
const express = require("express");

const secret = Buffer.from(process.env.WEBHOOK_SECRET || "");
const seen = new Set();
const app = express();
app.use(express.json({ limit: "256kb" }));

app.post("/webhooks/sendblue/:type", (req, res) => {
  const given = Buffer.from(req.get("sb-signing-secret") || "");
  if (given.length !== secret.length || !crypto.timingSafeEqual(given, secret)) {
    return res.status(401).json({ status: "error", error: "bad_signature" });
  }
  const { message_handle: handle, status } = req.body || {};
  const key = `${handle}:${status}`;
  if (seen.has(key)) {
    return res.status(200).json({ status: "duplicate" });
  }
  seen.add(key);
  res.status(200).json({ status: "accepted" });
});

app.get("/healthz", (_req, res) => res.send("ok"));

const server = app.listen(Number(process.env.PORT || 3000), "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
