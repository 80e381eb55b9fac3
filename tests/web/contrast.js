// Every visible text's contrast against the background it is drawn on, and every form
// control's border against its surroundings: WCAG 2.x AA (4.5:1 for text, 3:1 for large text
// and for the borders of controls). Returns the failures, as readable lines.
() => {
const channel = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
const parse = (text) => (text.match(/[0-9.]+/g) || []).map(Number);
const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
const ratio = (a, b) => { const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
const background = (element) => {
    for (let node = element; node; node = node.parentElement) {
        const [r, g, b, a = 1] = parse(getComputedStyle(node).backgroundColor);
        if (a > 0.5) return [r, g, b];
    }
    return parse(getComputedStyle(document.documentElement).backgroundColor);
};
const failures = [];
for (const element of document.querySelectorAll("body *")) {
    if (!element.checkVisibility() || element.closest("button:disabled")) continue;
    const text = [...element.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const style = getComputedStyle(element);
    if (text) {
        const large = parseFloat(style.fontSize) >= 24 || (parseFloat(style.fontSize) >= 18.66 && Number(style.fontWeight) >= 700);
        const found = ratio(parse(style.color), background(element));
        if (found < (large ? 3 : 4.5)) failures.push(`${element.tagName}#${element.id}.${element.className} "${element.textContent.trim().slice(0, 30)}" ${found.toFixed(2)}`);
    }
    if (element.matches("input, select, textarea")) {
        const found = ratio(parse(style.borderTopColor), background(element.parentElement));
        if (found < 3) failures.push(`border of ${element.id} ${found.toFixed(2)}`);
    }
}
return failures;
}
