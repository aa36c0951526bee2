// Used by scripts/test-env/up once Cassandra answers: logs in as the default superuser (cassandra/cassandra),
// creates the application role with a password and the permissions orderflow needs (every keyspace: it
// creates its own), and replaces the superuser's well-known password. Idempotent: a second run logs in with
// the new superuser password. Run as a single-file source program with the jars of cassandra-all:
//   java -cp "$ORDERFLOW_CACHE/cassandra-<v>/jars/*" CqlSetup.java HOST PORT ADMIN_PASSWORD APP_USER APP_PASSWORD
import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.Session;
import com.datastax.driver.core.exceptions.AuthenticationException;

public class CqlSetup {
  static Cluster cluster(String host, int port, String password) {
    return Cluster.builder().addContactPoint(host).withPort(port).withCredentials("cassandra", password)
        .withoutJMXReporting().withoutMetrics().build();
  }

  public static void main(String[] args) {
    String host = args[0];
    int port = Integer.parseInt(args[1]);
    String adminPassword = args[2], user = args[3], password = args[4];
    Cluster cluster = cluster(host, port, "cassandra");
    Session s;
    try {
      s = cluster.connect();
    } catch (AuthenticationException first) {
      cluster.close();
      cluster = cluster(host, port, adminPassword);
      s = cluster.connect();
    }
    try {
      s.execute("CREATE ROLE IF NOT EXISTS " + user + " WITH PASSWORD = '" + password + "' AND LOGIN = true");
      s.execute("ALTER ROLE " + user + " WITH PASSWORD = '" + password + "'");
      s.execute("GRANT ALL PERMISSIONS ON ALL KEYSPACES TO " + user);
      s.execute("ALTER ROLE cassandra WITH PASSWORD = '" + adminPassword + "'");
      System.out.println("cassandra: role " + user + " ready; superuser password replaced");
    } finally {
      cluster.close();
    }
  }
}
