// The console in a real browser: Debian's Chromium driven by Playwright. Run by
// api/tests/api/console.rs, which prepares the data and passes it in the environment:
//   CONSOLE_URL, EMAIL, PASSWORD      where the console is, and an admin's credentials
//   DOCUMENT_ID, DOCUMENT_ERROR       a failed document and the error it failed with
//   BATCH_ID                          a batch with items still queued
//   SCREENSHOTS                       a directory for the screenshots
//   PLAYWRIGHT_CORE                   the installed playwright-core package
// It exits non-zero, saying what it did not see, when the console does not behave.
"use strict";

const path = require("node:path");
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

async function main() {
  const url = env("CONSOLE_URL");
  const shots = env("SCREENSHOTS");
  const documentId = env("DOCUMENT_ID");
  const batchId = env("BATCH_ID");
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  let page;
  try {
    page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
    const problems = [];
    page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    page.on("console", (msg) => msg.type() === "error" && problems.push(`console error: ${msg.text()}`));
    page.setDefaultTimeout(30_000);

    // Sign in through the API's own login.
    await page.goto(`${url}/console`);
    await page.fill("input[name=email]", env("EMAIL"));
    await page.fill("input[name=password]", env("PASSWORD"));
    await page.click("#sign-in-form button[type=submit]");
    await page.locator("[data-testid=who]", { hasText: "(admin)" }).waitFor();
    await page.locator("#lanes tr[data-lane=interactive]").waitFor();
    console.log("signed in; the queue shows its lanes");

    // The failed document, with its error.
    const failure = page.locator(`#failures li[data-document="${documentId}"]`);
    await failure.waitFor();
    const shown = (await failure.locator("[data-testid=error]").textContent()).trim();
    if (shown !== env("DOCUMENT_ERROR")) {
      throw new Error(`the failure shows ${JSON.stringify(shown)}, not ${JSON.stringify(env("DOCUMENT_ERROR"))}`);
    }
    await page.screenshot({ path: path.join(shots, "1-failure.png"), fullPage: true });
    console.log("the failed document is listed with its error");

    // Retry: the document goes back to the queue and becomes ready.
    await failure.locator("[data-testid=retry]").click();
    await page.locator(`#actions li[data-document="${documentId}"] [data-status="ready"]`).waitFor({ timeout: 120_000 });
    await page.locator(`#failures li[data-document="${documentId}"]`).waitFor({ state: "detached" });
    await page.screenshot({ path: path.join(shots, "2-retried-ready.png"), fullPage: true });
    console.log("retried from the console, the document is ready");

    // The running batch: cancel it and see its bar stop.
    const batch = page.locator(`#batches li[data-batch="${batchId}"]`);
    await batch.locator("[data-testid=cancel-batch]").click();
    await batch.locator('[data-status="cancelled"]').waitFor();
    await batch.locator("[data-testid=counts]", { hasText: "finished" }).waitFor({ timeout: 60_000 });
    const counts = (await batch.locator("[data-testid=counts]").textContent()).trim();
    const label = await batch.locator("[data-testid=bar]").getAttribute("aria-label");
    if (!/^cancelled, \d+% ready$/.test(label)) throw new Error(`the bar says ${JSON.stringify(label)}`);
    if (await batch.locator("[data-testid=cancel-batch]").count()) throw new Error("a stopped batch still offers Cancel");
    await page.screenshot({ path: path.join(shots, "3-batch-cancelled.png"), fullPage: true });
    console.log(`the batch is cancelled and stopped: ${counts}`);

    // A phone's width: one column, nothing wider than the screen.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.locator("[data-testid=queue]").waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 1) throw new Error(`at 390 px the page is ${overflow} px wider than the screen`);
    await page.screenshot({ path: path.join(shots, "4-phone.png"), fullPage: true });
    console.log("at a phone's width the page fits");

    if (problems.length) throw new Error(problems.join("\n"));
  } catch (err) {
    // What the page showed when it went wrong, for whoever reads the failure.
    if (page) {
      await page.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
      for (const id of ["problem", "refusal", "failures", "actions", "batches", "workers"]) {
        const text = await page.locator(`#${id}`).innerText().catch(() => "(unreadable)");
        console.error(`#${id}: ${text.replace(/\s+/g, " ").trim()}`);
      }
    }
    throw err;
  } finally {
    await browser.close();
  }
}

main().catch((err) => {
  console.error(err.stack || String(err));
  // Not process.exit(): it can cut what was written to a pipe but not yet flushed.
  process.exitCode = 1;
});
