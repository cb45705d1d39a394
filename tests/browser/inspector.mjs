// The inspector in Debian's chromium, driven by playwright-core. Run by tests/inspector.rs with:
// BASE (a `bluehook dev` on loopback whose `bot` destination fails once), GUARDED_BASE and
// TOKEN (one on 0.0.0.0 with --inspector-token), SECRET (the sendblue source's secret),
// BLUEHOOK_BIN, CHROMIUM, PROFILE (an empty folder). Prints one line per check; exits 1 at the
// first that fails.
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";

const { BASE, GUARDED_BASE, TOKEN, SECRET, BLUEHOOK_BIN, CHROMIUM, PROFILE } = process.env;
const TIMEOUT = 20000;

function ok(what) {
  console.log(`ok - ${what}`);
}

function send(secret, content) {
  // The real command line, over real HTTP, while the page is open.
  try {
    execFileSync(BLUEHOOK_BIN, ["send", "sendblue.receive", "--url", `${BASE}/webhooks/sendblue`, "--secret", secret, "--content", content], { stdio: "pipe" });
  } catch (e) {
    // A refused webhook makes `bluehook send` exit 1: that is expected for a wrong secret.
    if (secret === SECRET) throw e;
  }
}

// Chromium itself now and then dies while starting on a busy machine (SIGSEGV before the first
// page): that is retried, up to three starts; nothing after the start is.
async function started(start) {
  for (let tries = 1; ; tries++) {
    try {
      return await start();
    } catch (e) {
      if (tries >= 3) throw e;
      console.log(`chromium did not start (try ${tries}): ${String(e).split("\n")[0]}`);
    }
  }
}
const context = await started(() => chromium.launchPersistentContext(PROFILE, {
  executablePath: CHROMIUM,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1366, height: 800 },
}));
context.setDefaultTimeout(TIMEOUT);
let failed = false;
try {
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("dialog", async (d) => { errors.push("a dialog opened: " + d.message()); await d.dismiss(); });

  // The page loads, empty, and goes live.
  const response = await page.goto(BASE + "/");
  if (response.status() !== 200) throw new Error(`GET / answered ${response.status()}`);
  await page.getByTestId("live").filter({ hasText: /^live$/ }).waitFor();
  if ((await page.getByTestId("request-row").count()) !== 0) throw new Error("rows before any webhook");
  ok("the page loads and its live stream connects");

  // A webhook sent while it is open appears, without a reload; its body carries markup.
  const hostile = `<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> hi`;
  send(SECRET, hostile);
  const accepted = page.locator('[data-testid="request-row"][data-outcome="accepted"]');
  await accepted.first().waitFor();
  ok("an accepted webhook appears live");

  // A refused one shows its code and reason.
  send("not-the-secret", "refused one");
  const refused = page.locator('[data-testid="request-row"][data-outcome="refused"]');
  await refused.first().waitFor();
  const refusedText = await refused.first().getByTestId("outcome").textContent();
  if (!refusedText.includes("401") || !refusedText.includes("bad_signature")) throw new Error(`refused row says: ${refusedText}`);
  ok(`a refused webhook shows "${refusedText}"`);

  // The detail: headers redacted, raw body as text, the attempts (a 500, then delivered) shown
  // as they happen.
  await accepted.first().click();
  const detail = page.getByTestId("detail");
  await detail.getByTestId("raw-body").waitFor();
  const raw = await detail.getByTestId("raw-body").textContent();
  if (!raw.includes("<script>window.__pwned = 1</script>")) throw new Error("the raw body is not shown as text: " + raw.slice(0, 200));
  await detail.locator('[data-testid="attempt"][data-destination="bot"]').nth(1).waitFor();
  const attempts = await detail.locator('[data-testid="attempt"][data-destination="bot"]').allTextContents();
  if (!attempts[0].includes("HTTP 500") || !attempts[0].includes("retrying") || !attempts[1].includes("delivered")) {
    throw new Error("attempts shown: " + JSON.stringify(attempts));
  }
  await detail.getByTestId("event-state").filter({ hasText: "delivered" }).waitFor();
  ok("the detail shows both attempts of the bot, live");

  // Nothing from the webhook ran or became markup.
  const pwned = await page.evaluate(() => window.__pwned);
  if (pwned !== undefined) throw new Error("a script from the webhook ran: " + pwned);
  const scripts = await page.evaluate(() => document.querySelectorAll("script").length);
  const images = await page.evaluate(() => document.querySelectorAll("img").length);
  if (scripts !== 1 || images !== 0) throw new Error(`the body became markup: ${scripts} scripts, ${images} images`);
  ok("a <script> in a body is shown as text and not executed");

  // No secret in the DOM; the signature header is shown redacted.
  const html = await page.content();
  if (html.includes(SECRET)) throw new Error("the source's secret is in the page");
  const headerRows = await detail.getByTestId("headers").locator("tr").allTextContents();
  if (!headerRows.some((r) => r.startsWith("sb-signing-secret") && r.includes("<redacted>"))) throw new Error("headers: " + JSON.stringify(headerRows));
  ok("no secret in the DOM; sb-signing-secret shown as <redacted>");

  // Redeliver to the bot from the page: a third attempt, delivered.
  await detail.locator('[data-testid="delivery"][data-destination="bot"]').getByTestId("redeliver").click();
  await page.getByTestId("notice").filter({ hasText: "queued for bot" }).waitFor();
  await detail.locator('[data-testid="attempt"][data-destination="bot"]').nth(2).waitFor();
  const third = await detail.locator('[data-testid="attempt"][data-destination="bot"]').nth(2).textContent();
  if (!third.includes("delivered")) throw new Error("the redelivery's attempt: " + third);
  ok("redelivering from the page makes a third, delivered attempt");

  // Send a sample from the page: it is answered and appears in the list.
  const before = await accepted.count();
  await page.getByTestId("sample").selectOption("sendblue.outbound");
  await page.getByTestId("sample-content").fill("from the page");
  await page.getByTestId("send-sample").click();
  await page.getByTestId("notice").filter({ hasText: "HTTP 200 accepted" }).waitFor();
  await page.waitForFunction((n) => document.querySelectorAll('[data-testid="request-row"][data-outcome="accepted"]').length > n, before);
  ok("sending a sample from the page is accepted and listed");

  // Filters and search.
  await page.getByTestId("filter-outcome").selectOption("refused");
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('[data-testid="request-row"]')];
    return rows.length === 1 && rows[0].dataset.outcome === "refused";
  });
  await page.getByTestId("filter-outcome").selectOption("");
  const eventId = (await accepted.last().locator("td").nth(3).textContent()).trim();
  await page.getByTestId("search").fill(eventId);
  await page.waitForFunction((id) => {
    const rows = [...document.querySelectorAll('[data-testid="request-row"]')];
    return rows.length === 1 && rows[0].textContent.includes(id);
  }, eventId);
  await page.getByTestId("search").fill("");
  ok("filtering by outcome and searching by event id narrow the list");

  if (errors.length) throw new Error("page errors: " + errors.join("; "));

  // The token guard on a non-loopback address: without the token nothing, with it the page.
  const bare = await context.newPage();
  const refusedPage = await bare.goto(GUARDED_BASE + "/");
  if (refusedPage.status() !== 401) throw new Error(`without the token: ${refusedPage.status()}`);
  if ((await bare.content()).includes("bluehook inspector</title>")) throw new Error("the page was served without the token");
  await bare.close();
  const withToken = await started(() => chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--no-first-run"],
  }));
  try {
    const ctx = await withToken.newContext({ extraHTTPHeaders: { Authorization: `Bearer ${TOKEN}` } });
    const guarded = await ctx.newPage();
    const r = await guarded.goto(GUARDED_BASE + "/");
    if (r.status() !== 200) throw new Error(`with the token: ${r.status()}`);
    await guarded.getByTestId("live").filter({ hasText: /^live$/ }).waitFor({ timeout: TIMEOUT });
    if ((await guarded.content()).includes(TOKEN)) throw new Error("the token is in the page");
  } finally {
    await withToken.close();
  }
  ok("on 0.0.0.0 the inspector answers 401 without the token and works with it");
  console.log("all checks passed");
} catch (e) {
  failed = true;
  console.log(`not ok - ${e.stack || e}`);
} finally {
  await context.close();
}
process.exit(failed ? 1 : 0);
