// The entry point of every UI page: <body data-page="..."> names the view.
import { comparePage } from "./compare.js";
import { errorBox, signOut } from "./lib.js";
import { runPage } from "./run.js";
import { runsPage } from "./runs.js";
import { sweepPage, sweepsPage } from "./sweeps.js";

const PAGES = { runs: runsPage, run: runPage, compare: comparePage, sweeps: sweepsPage, sweep: sweepPage };

document.getElementById("signout").addEventListener("click", signOut);
const main = document.getElementById("main");
const page = PAGES[document.body.dataset.page];
page(main).catch((err) => {
  main.append(errorBox(err));
  main.dataset.error = String(err && err.message);
});
