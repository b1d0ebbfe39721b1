// The explorer in a real headless Chromium, with every request to anything but the server
// refused: load the landing page, follow the link to the explorer, run a query through the
// UI and read the result off the screen.
//
//   node explorer.mjs <base-url> <query>
//
// Prints one JSON object: { result, refused, errors } where `result` is the text of the
// result pane, `refused` every URL the page tried outside the server, `errors` page errors.
import { chromium } from "playwright-core";

const [base, query] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const out = { result: null, refused: [], errors: [] };
try {
  const context = await browser.newContext();
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(base) || url.startsWith(base.replace(/^http/, "ws"))) {
      return route.continue();
    }
    out.refused.push(url);
    return route.abort("blockedbyclient");
  });
  const page = await context.newPage();
  page.on("pageerror", (e) => out.errors.push(String(e)));
  await page.goto(`${base}/`);
  await page.click("a#explorer");
  await page.waitForSelector(".graphiql-container", { timeout: 30000 });
  // Replace the default query with ours, through the editor as a user would.
  const editor = page.locator(".graphiql-query-editor .CodeMirror").first();
  await editor.click();
  await page.keyboard.press("Control+A");
  await page.keyboard.press("Delete");
  await page.keyboard.insertText(query);
  await page.click(".graphiql-execute-button");
  const result = page.locator(".result-window");
  await page.waitForFunction(
    () => {
      const el = document.querySelector(".result-window");
      return el && el.innerText.includes('"data"');
    },
    null,
    { timeout: 30000 }
  );
  out.result = await result.innerText();
} catch (e) {
  out.errors.push(String(e));
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
