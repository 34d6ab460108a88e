// Run by the mongo image once, on the first start of an empty mongo-data volume, as the
// root user (/docker-entrypoint-initdb.d, mounted read-only by docker-compose.yml).
// Creates the chore's own user: readWrite on the billing database, nothing else. The root
// user is for administration only. Names and passwords come from the container's
// environment (docker-compose.yml, filled in from .env): none is written here.
const user = process.env.CHORE_MONGO_USERNAME;
const pwd = process.env.CHORE_MONGO_PASSWORD;
const billingDb = process.env.CHORE_MONGO_DB;
if (!user || !pwd || !billingDb) {
  throw new Error("CHORE_MONGO_USERNAME, CHORE_MONGO_PASSWORD and CHORE_MONGO_DB must be set");
}
if (user === process.env.MONGO_INITDB_ROOT_USERNAME) {
  throw new Error("MONGO_USERNAME must differ from MONGO_ROOT_USERNAME: the chore is not root");
}
db.getSiblingDB("admin").createUser({
  user: user,
  pwd: pwd,
  roles: [{ role: "readWrite", db: billingDb }],
});
print(`created user ${user}: readWrite on database ${billingDb}`);
