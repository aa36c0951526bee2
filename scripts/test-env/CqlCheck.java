// Used by scripts/test-env/smoke: a CQL round trip with the DataStax Java driver 3.x that ships (shaded)
// among cassandra-all's dependencies, so no cqlsh/Python is needed. Run as a single-file source program:
//   java -cp "$ORDERFLOW_CACHE/cassandra-<v>/jars/*" CqlCheck.java HOST PORT [USER PASSWORD]
import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.Row;
import com.datastax.driver.core.Session;

public class CqlCheck {
  public static void main(String[] args) {
    String host = args[0];
    int port = Integer.parseInt(args[1]);
    String value = "smoke-" + System.nanoTime();
    Cluster.Builder builder = Cluster.builder().addContactPoint(host).withPort(port).withoutJMXReporting().withoutMetrics();
    if (args.length >= 4) {
      builder = builder.withCredentials(args[2], args[3]);
    }
    try (Cluster cluster = builder.build();
         Session s = cluster.connect()) {
      Row v = s.execute("SELECT release_version FROM system.local").one();
      System.out.println("cassandra release_version=" + v.getString("release_version"));
      s.execute("CREATE KEYSPACE IF NOT EXISTS orderflow_smoke WITH replication = "
          + "{'class': 'SimpleStrategy', 'replication_factor': 1}");
      s.execute("CREATE TABLE IF NOT EXISTS orderflow_smoke.kv (k text PRIMARY KEY, v text)");
      s.execute("INSERT INTO orderflow_smoke.kv (k, v) VALUES ('smoke', ?)", value);
      Row r = s.execute("SELECT v FROM orderflow_smoke.kv WHERE k = 'smoke'").one();
      if (r == null || !value.equals(r.getString("v"))) {
        throw new IllegalStateException("read back " + (r == null ? "nothing" : r.getString("v")) + ", wrote " + value);
      }
      Row lwt = s.execute("INSERT INTO orderflow_smoke.kv (k, v) VALUES ('smoke', 'x') IF NOT EXISTS").one();
      if (lwt.getBool("[applied]")) {
        throw new IllegalStateException("LWT IF NOT EXISTS applied over an existing row");
      }
      s.execute("DROP KEYSPACE orderflow_smoke");
      System.out.println("cassandra CQL round trip ok (create/insert/select/LWT/drop)");
    }
  }
}
