// Drives the analyst console in Debian's Chromium (playwright-core, no bundled browser).
// Started by tests/console.rs with: BASE_URL, ANALYST_KEY (responder role), VIEWER_KEY,
// SHOTS (directory for screenshots), CHROMIUM (the browser). Prints READY when it is signed in
// and watching the empty queue; the Rust side then streams the attack into `cordon run`.
// Any failed check, page error or console error exits non-zero with the reason.
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const { BASE_URL, ANALYST_KEY, VIEWER_KEY, SHOTS, CHROMIUM } = process.env;
mkdirSync(SHOTS, { recursive: true });
const problems = [];
const check = (ok, what) => {
  if (!ok) throw new Error(`check failed: ${what}`);
};

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  const shot = (name) => page.screenshot({ path: join(SHOTS, `${name}.png`) });

  // Sign in: a wrong key is refused, the right one lands on the queue.
  await page.goto(BASE_URL);
  await shot("01-sign-in");
  await page.getByLabel("API key").fill("cordon_wrong");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("That key was not accepted.").waitFor();
  // The refused key's 401 is logged by Chromium as a failed resource: expected, not a fault.
  problems.length = 0;
  await page.getByLabel("API key").fill(ANALYST_KEY);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Alerts" }).waitFor();
  check((await page.locator("#alert-rows tr").count()) === 0, "the queue starts empty");
  console.log("READY");

  // The attack's alert appears without a reload.
  const row = page.locator("#alert-rows tr", { hasText: "cordon.mcp.chain." }).first();
  await row.waitFor({ timeout: 60_000 });
  await shot("02-alert-queue");

  // Alert detail: the chain as a timeline with what flowed between steps.
  await row.getByRole("link").first().click();
  await page.locator("#timeline li").first().waitFor();
  const steps = await page.locator("#timeline li").count();
  check(steps >= 2, `a chain of at least two steps (saw ${steps})`);
  check((await page.getByText(/Rule/).count()) > 0, "the rule is shown");
  await shot("03-alert-detail");
  const alertUrl = page.url();
  const alertId = decodeURIComponent(alertUrl.split("#/alert/")[1]);

  // Pending approvals: approve with a reason; the playbook's next step runs and succeeds.
  await page.getByRole("link", { name: /Approvals/ }).click();
  await page.getByRole("heading", { name: "Pending approvals" }).waitFor();
  const pending = page.locator("[data-action]", { hasText: alertId });
  await pending.waitFor();
  await shot("04-approvals");
  await pending.getByLabel("Reason").fill("confirmed exfiltration, notify the SOC");
  await pending.getByRole("button", { name: "Approve" }).click();
  await pending.waitFor({ state: "detached" });
  // The action's outcome on the alert: the notify step succeeded after approval.
  let succeeded = false;
  for (let i = 0; i < 40 && !succeeded; i++) {
    await page.goto(alertUrl);
    await page.locator("#actions").waitFor();
    const text = await page.locator("#actions").innerText();
    succeeded = /notify[\s\S]*succeeded/.test(text) && /require_approval[\s\S]*approved/.test(text);
    if (!succeeded) await page.waitForTimeout(500);
  }
  check(succeeded, "the approved playbook's notify step succeeded");
  await shot("05-alert-after-approval");

  // Work the alert: acknowledge, and the history shows who did it.
  await page.getByRole("button", { name: "Acknowledge" }).click();
  await page.locator("#history", { hasText: "ack by" }).waitFor();

  // Agent page: profile and expected band.
  await page.locator("dd a").first().click();
  await page.getByRole("img", { name: /expected band/ }).waitFor();
  await shot("06-agent");

  // SQL console: run a query, download CSV.
  await page.getByRole("link", { name: "SQL" }).click();
  await page.locator("#schema details").first().waitFor();
  await page.getByRole("textbox", { name: /^Query/ }).fill("SELECT rule_id, count(*) AS n FROM alerts GROUP BY rule_id ORDER BY n DESC");
  await page.getByRole("button", { name: "Run" }).click();
  await page.getByRole("table", { name: "Query results" }).waitFor();
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Download CSV" }).click()]);
  const csvPath = join(SHOTS, "query.csv");
  await download.saveAs(csvPath);
  check(readFileSync(csvPath, "utf8").startsWith("rule_id,n\n"), "the CSV has the header");
  await shot("07-sql");

  // A viewer sees no approve button, no SQL, and the API refuses a decision with 403.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("API key").fill(VIEWER_KEY);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Alerts" }).waitFor();
  check(!(await page.getByRole("link", { name: "SQL" }).isVisible()), "no SQL link for a viewer");
  check(!(await page.getByRole("button", { name: "Acknowledge" }).isVisible()), "no bulk actions for a viewer");
  await page.getByRole("link", { name: /Approvals/ }).click();
  await page.getByRole("heading", { name: "Pending approvals" }).waitFor();
  check((await page.getByRole("button", { name: "Approve" }).count()) === 0, "no approve button for a viewer");
  const status = await page.evaluate(async (key) => {
    const r = await fetch("/api/v1/actions/any/approve", {
      method: "POST",
      headers: { Authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ reason: "x" }),
    });
    return r.status;
  }, VIEWER_KEY);
  check(status === 403, `the API refuses a viewer's approval (got ${status})`);
  // That 403 is the point of the check; drop Chromium's log of it.
  const left = problems.filter((p) => !p.includes("403"));
  await shot("08-viewer-approvals");
  check(left.length === 0, `no console errors: ${left.join(" | ")}`);
  console.log("DONE");
} catch (e) {
  console.error(e.stack || String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
