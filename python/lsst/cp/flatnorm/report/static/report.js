// This file is part of cp_flatnorm (3-clause BSD licence, see LICENSE); written for its flat reports.
// Sortable tables: a click on a header sorts the body by that column (numbers by their data-value),
// a second click reverses.  Zoomable images: a click doubles the width, up to 8x, then back to fit.
"use strict";

function cellKey(row, column) {
  const cell = row.cells[column];
  if (!cell) {
    return "";
  }
  const value = cell.getAttribute("data-value");
  return value === null ? cell.textContent.trim() : Number(value);
}

function compareKeys(a, b) {
  const aNumber = typeof a === "number" && !Number.isNaN(a);
  const bNumber = typeof b === "number" && !Number.isNaN(b);
  if (aNumber && bNumber) {
    return a - b;
  }
  if (aNumber !== bNumber) {
    return aNumber ? -1 : 1;  // NaN and text after numbers
  }
  return String(a).localeCompare(String(b), undefined, {numeric: true});
}

function sortTable(table, column, header) {
  const body = table.tBodies[0];
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  const rows = Array.from(body.rows);
  rows.sort((r1, r2) => compareKeys(cellKey(r1, column), cellKey(r2, column)) * (ascending ? 1 : -1));
  for (const other of header.parentElement.children) {
    other.removeAttribute("aria-sort");
  }
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  for (const row of rows) {
    body.appendChild(row);
  }
}

function zoom(image) {
  const width = image.getBoundingClientRect().width;
  if (!image.dataset.fitWidth) {
    image.dataset.fitWidth = width;
  }
  if (width >= 8 * Number(image.dataset.fitWidth)) {
    image.style.width = "";
    image.classList.remove("zoomed");
  } else {
    image.classList.add("zoomed");
    image.style.width = (2 * width) + "px";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const table of document.querySelectorAll("table.sortable")) {
    table.querySelectorAll("thead th").forEach((header, column) => {
      header.addEventListener("click", () => sortTable(table, column, header));
      header.title = "click to sort";
    });
  }
  for (const image of document.querySelectorAll("img.zoomable")) {
    image.addEventListener("click", () => zoom(image));
    image.title = "click to zoom";
  }
});
