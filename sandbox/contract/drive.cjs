// The official stripe-node SDK, unchanged, driving every operation the sandbox serves.
// Each answer is recorded as it came over the wire (through the SDK's own fetch client)
// and written as JSON lines to argv[2], for contract.py to check against the description.
//
//   SANDBOX_URL=http://127.0.0.1:12111 NODE_PATH=<dir>/node_modules node drive.cjs out.jsonl

const fs = require("fs");
const Stripe = require("stripe");

const records = [];
async function recordingFetch(url, init) {
  const response = await fetch(url, init);
  const body = await response.clone().text();
  records.push({ method: init.method, url: String(url), status: response.status, body });
  return response;
}

function must(what, condition) {
  if (!condition) throw new Error(`expected: ${what}`);
}

async function main() {
  const base = new URL(process.env.SANDBOX_URL);
  const stripe = new Stripe("sk_test_node", {
    host: base.hostname,
    port: Number(base.port),
    protocol: base.protocol.replace(":", ""),
    httpClient: Stripe.createFetchHttpClient(recordingFetch),
    maxNetworkRetries: 0,
  });

  const c = await stripe.customers.create({
    name: "Node",
    email: "node@example.com",
    metadata: { a: "1" },
  });
  await stripe.customers.update(c.id, { name: "Node JS", metadata: { a: "" } });
  await stripe.customers.retrieve(c.id);
  await stripe.customers.list({ limit: 3 });
  await stripe.customers.search({ query: "email:'node@example.com'" });
  const item = await stripe.invoiceItems.create({ customer: c.id, amount: 900, currency: "usd" });
  await stripe.invoiceItems.retrieve(item.id);
  await stripe.invoiceItems.list({ customer: c.id });
  const inv = await stripe.invoices.create({
    customer: c.id,
    auto_advance: false,
    pending_invoice_items_behavior: "include",
  });
  const expanded = await stripe.invoices.retrieve(inv.id, { expand: ["customer"] });
  must("an expanded customer", expanded.customer.object === "customer");
  await stripe.invoices.update(inv.id, { description: "Node" });
  await stripe.invoices.listLineItems(inv.id);
  await stripe.invoices.finalizeInvoice(inv.id);
  try {
    await stripe.invoices.pay(inv.id, { payment_method: "pm_card_chargeDeclined" });
    throw new Error("a declined card was charged");
  } catch (e) {
    must("a StripeCardError card_declined", e.type === "StripeCardError" && e.code === "card_declined");
  }
  await stripe.invoices.pay(inv.id);
  for (const action of ["voidInvoice", "markUncollectible", null]) {
    await stripe.invoiceItems.create({ customer: c.id, amount: 300, currency: "usd" });
    const other = await stripe.invoices.create({
    customer: c.id,
    auto_advance: false,
    pending_invoice_items_behavior: "include",
  });
    if (action === null) {
      await stripe.invoices.del(other.id);
    } else {
      await stripe.invoices.finalizeInvoice(other.id);
      await stripe.invoices[action](other.id);
    }
  }
  await stripe.invoices.list({ customer: c.id, expand: ["data.customer"] });
  await stripe.invoices.search({ query: `customer:'${c.id}'` });
  const events = await stripe.events.list({ limit: 5 });
  await stripe.events.retrieve(events.data[0].id);
  await stripe.customers.del(c.id);
  try {
    await stripe.customers.retrieve("cus_missing_node");
    throw new Error("an unknown customer was found");
  } catch (e) {
    must("a 404 for an unknown customer", e.statusCode === 404);
  }
}

main()
  .then(() => {
    fs.writeFileSync(process.argv[2], records.map((r) => JSON.stringify(r)).join("\n") + "\n");
    console.log(`stripe-node ${Stripe.PACKAGE_VERSION || ""}: ${records.length} calls recorded`);
  })
  .catch((e) => {
    console.error(e);
    process.exit(1);
  });
